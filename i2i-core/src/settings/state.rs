// SPDX-License-Identifier: MPL-2.0
//! The Clone pattern on the settings link: the state holder (`i2i-prompt`) publishes the
//! FULL current settings with a sequence number on every change and as a heartbeat, so a
//! subscriber that joins late, or lost messages to the slow-joiner problem or a full
//! queue, has everything within one heartbeat. Each subscriber turns the snapshots into
//! changes against the snapshot it saw before, so a heartbeat applies nothing twice.
//!
//! Wire (PUB/SUB, two frames): `i2i-state` then a JSON object
//! `{"epoch": E, "seq": N, "control-port": P, "settings": {<SettingsUpdate>}}`.
//! `epoch` is chosen when the state holder starts (a restarted one is a new epoch),
//! `seq` counts changes within an epoch, `control-port` is where the holder takes
//! commands and reports.
//!
//! Reports of applied values travel back on the control socket as two frames:
//! `i2i-applied` then a JSON [`AppliedReport`]; the holder republishes them on its PUB
//! socket with the same two frames so every operator console can show them.

use serde::{Deserialize, Serialize};

use super::SettingsUpdate;

/// First frame of a state snapshot.
pub const STATE_TOPIC: &[u8] = b"i2i-state";
/// First frame of an applied-values report.
pub const APPLIED_TOPIC: &[u8] = b"i2i-applied";
/// Name of the custom upstream event i2itransform sends on its settings pad when it
/// applies settings: fields `frame-index` (u64) and `settings` (the applied
/// [`SettingsUpdate`] as JSON). settingssrc turns it into an [`AppliedReport`].
pub const APPLIED_EVENT: &str = "i2i-settings-applied";
/// Name of the custom upstream event i2itransform sends on its settings pad when it
/// refuses keys of an update: field `refused` (one reason per line). settingssrc turns
/// it into an [`AppliedReport`] with `refused` set, so the operator sees why.
pub const REFUSED_EVENT: &str = "i2i-settings-refused";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    pub epoch: u64,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_port: Option<u16>,
    pub settings: SettingsUpdate,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<Vec<u8>> {
        vec![
            STATE_TOPIC.to_vec(),
            serde_json::to_vec(self).expect("snapshot serialises"),
        ]
    }

    /// From the second frame of a state message.
    pub fn decode(body: &[u8]) -> Result<Snapshot, String> {
        let s: Snapshot = serde_json::from_slice(body)
            .map_err(|e| format!("state snapshot is not valid: {e}"))?;
        s.settings
            .validate()
            .map_err(|e| format!("state snapshot seq {}: {e}", s.seq))?;
        Ok(s)
    }
}

/// What a transform reports after applying settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppliedReport {
    /// Who applied them (element name and host).
    pub source: String,
    /// Snapshot sequence number they came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Index of the first frame rendered with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    pub settings: SettingsUpdate,
    /// Keys the transform refused, one reason each ("t-index-list ... refused: ...").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// The sender's CURVE public key (Z85) as the holder authenticated it; set by the
    /// holder, never trusted from the sender (a sender's own value is overwritten).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl AppliedReport {
    /// Who sent it, for people: the authenticated key when there is one (the `source`
    /// name is only what the sender calls itself), else the source.
    pub fn sender(&self) -> String {
        match &self.key {
            Some(k) => format!(
                "key {}… (calls itself {})",
                k.chars().take(10).collect::<String>(),
                self.source
            ),
            None => self.source.clone(),
        }
    }

    /// One line for people: what was applied and what was refused.
    pub fn describe(&self) -> String {
        let mut lines = Vec::new();
        if !self.settings.is_empty() {
            let mut l = format!("applied by {}", self.sender());
            if let Some(f) = self.frame {
                l.push_str(&format!(" from frame {f}"));
            }
            if let Some(s) = self.seq {
                l.push_str(&format!(" (seq {s})"));
            }
            l.push_str(&format!(": {}", self.settings.summary()));
            lines.push(l);
        }
        for r in &self.refused {
            lines.push(format!("refused by {}: {r}", self.sender()));
        }
        lines.join("\n")
    }
}

impl AppliedReport {
    pub fn encode(&self) -> Vec<Vec<u8>> {
        vec![
            APPLIED_TOPIC.to_vec(),
            serde_json::to_vec(self).expect("report serialises"),
        ]
    }

    pub fn decode(body: &[u8]) -> Result<AppliedReport, String> {
        serde_json::from_slice(body).map_err(|e| format!("applied report is not valid: {e}"))
    }
}

/// Turns snapshots into changes. Snapshots of an older sequence number in the same epoch
/// are ignored; a new epoch starts from nothing (its full state is a change).
#[derive(Clone, Debug, Default)]
pub struct SnapshotFollower {
    last: Option<(u64, u64, SettingsUpdate)>,
}

impl SnapshotFollower {
    /// The changes this snapshot brings (empty for a heartbeat or a stale snapshot).
    pub fn follow(&mut self, snap: &Snapshot) -> SettingsUpdate {
        let empty = SettingsUpdate::default();
        let previous = match &self.last {
            Some((epoch, seq, prev)) if *epoch == snap.epoch => {
                if snap.seq < *seq {
                    return SettingsUpdate::default();
                }
                prev
            }
            _ => &empty,
        };
        let changes = snap.settings.changes_since(previous);
        self.last = Some((snap.epoch, snap.seq, snap.settings.clone()));
        changes
    }

    /// Epoch and sequence number of the last snapshot followed.
    pub fn position(&self) -> Option<(u64, u64)> {
        self.last.as_ref().map(|(e, s, _)| (*e, *s))
    }

    /// Forget everything: the next snapshot counts in full (after a restart of the element).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(epoch: u64, seq: u64, settings: SettingsUpdate) -> Snapshot {
        Snapshot {
            epoch,
            seq,
            control_port: Some(5560),
            settings,
        }
    }

    #[test]
    fn heartbeats_apply_nothing_twice() {
        let mut f = SnapshotFollower::default();
        let s1 = SettingsUpdate {
            prompt: Some("fox".into()),
            seed: Some(1),
            ..Default::default()
        };
        // A late joiner gets everything from its first snapshot.
        assert_eq!(f.follow(&snap(7, 3, s1.clone())), s1);
        // Heartbeat: nothing.
        assert!(f.follow(&snap(7, 3, s1.clone())).is_empty());
        let mut s2 = s1.clone();
        s2.seed = Some(2);
        let d = f.follow(&snap(7, 4, s2.clone()));
        assert_eq!(
            d,
            SettingsUpdate {
                seed: Some(2),
                ..Default::default()
            }
        );
        // A stale snapshot is ignored.
        assert!(f.follow(&snap(7, 3, s1.clone())).is_empty());
        assert_eq!(f.position(), Some((7, 4)));
        // A restarted state holder (new epoch) counts in full.
        assert_eq!(f.follow(&snap(8, 0, s1.clone())), s1);
        f.reset();
        assert_eq!(f.follow(&snap(8, 0, s1.clone())), s1);
    }

    #[test]
    fn snapshot_wire_round_trip() {
        let s = snap(
            1,
            2,
            SettingsUpdate {
                seed: Some(9),
                ..Default::default()
            },
        );
        let frames = s.encode();
        assert_eq!(frames[0], STATE_TOPIC);
        assert_eq!(
            std::str::from_utf8(&frames[1]).unwrap(),
            r#"{"epoch":1,"seq":2,"control-port":5560,"settings":{"seed":9}}"#
        );
        assert_eq!(Snapshot::decode(&frames[1]).unwrap(), s);
        assert!(Snapshot::decode(b"{}").unwrap_err().contains("not valid"));
        let bad = br#"{"epoch":1,"seq":2,"settings":{"guidance-scale":1000}}"#;
        assert!(
            Snapshot::decode(bad)
                .unwrap_err()
                .contains("guidance-scale")
        );
        let r = AppliedReport {
            source: "i2i0@host".into(),
            seq: Some(2),
            frame: Some(40),
            settings: SettingsUpdate {
                seed: Some(9),
                ..Default::default()
            },
            refused: vec!["t-index-list \"10,60\" refused: t-index 60 is out of range".into()],
            key: None,
        };
        assert_eq!(
            r.describe(),
            "applied by i2i0@host from frame 40 (seq 2): seed=9\n\
             refused by i2i0@host: t-index-list \"10,60\" refused: t-index 60 is out of range"
        );
        assert_eq!(AppliedReport::decode(&r.encode()[1]).unwrap(), r);
    }
}
