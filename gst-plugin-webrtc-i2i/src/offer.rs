// SPDX-License-Identifier: MPL-2.0
//! The SDP offers the WHIP and WHEP endpoints take: checked in full before webrtcbin sees
//! them, and adjusted where the WebRTC element needs it.
//!
//! webrtcbin checks little of what it is given, and what it refuses it refuses late: an offer
//! without ICE credentials makes its create-answer fail (webrtcsrc then posts an error that
//! ends the pipeline), and each of hundreds of m-lines costs a transceiver. So an offer must
//! have, before anyone looks at its codecs: at most [`MAX_MEDIA`] m-lines; on every m-line
//! (webrtcbin checks them all, rejected ones too) a `mid`, ICE credentials (RFC 8839, the same
//! ones across a BUNDLE group), a DTLS setup role of its own (RFC 8842) and a DTLS-SRTP
//! transport; one DTLS fingerprint (RFC 8122), at session level or the same on every m-line;
//! no `k=` line; and one video m-line that the endpoint can use (direction and codec). Each
//! refusal says what is wrong and where (the m-line's index).
//!
//! WHIP offers are then narrowed to that one video m-line: every other audio or video m-line
//! is answered `inactive`, so the publisher sends nothing the pipeline would throw away (OBS
//! sends Opus audio otherwise) and webrtcsrc makes one pad per publisher.

use axum::http::StatusCode;

/// Largest SDP offer taken: real offers are a few KiB.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// Most m-lines an offer may have (a browser publishing camera and microphone has 2, OBS 2).
pub const MAX_MEDIA: usize = 16;

/// Video codecs the pipeline can decode (WHIP) or encode (WHEP) with the packages set-up installs.
pub const CODECS: &[&str] = &["H264", "VP8", "VP9"];

/// Which side an offer is for: a publisher sends video, a viewer receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// WHIP: the offer's video must be sendonly or sendrecv.
    Publisher,
    /// WHEP: the offer's video must be recvonly or sendrecv.
    Viewer,
}

impl Side {
    fn who(self) -> &'static str {
        match self {
            Side::Publisher => "WHIP",
            Side::Viewer => "WHEP",
        }
    }
}

/// What an endpoint takes: the codecs (a subset of [`CODECS`]) and, when it is narrower than
/// the element can do, the property that widens it (named in the refusal).
#[derive(Debug, Clone, Copy)]
pub struct Accepts {
    pub codecs: &'static [&'static str],
    pub hint: Option<&'static str>,
    /// WHEP with one H264 encoder for all viewers: its stream has one level, so an H264
    /// offer that names a lower level without `level-asymmetry-allowed` is taken as allowing
    /// it (see [`allow_h264_level_asymmetry`]).
    pub any_h264_level: bool,
}

impl Accepts {
    pub const ALL: Accepts = Accepts {
        codecs: CODECS,
        hint: None,
        any_h264_level: false,
    };
}

/// A refusal: the HTTP status and the reason, for the response body and the bus.
pub type Refusal = (StatusCode, String);

fn bad(text: String) -> Refusal {
    (StatusCode::BAD_REQUEST, text)
}

/// An offer that passed [`check_offer`]: the SDP to hand to the WebRTC element.
#[derive(Debug)]
pub struct Offer {
    pub sdp: Vec<u8>,
}

/// Checks an SDP offer and returns what the WebRTC element is given, or what is wrong with it.
pub fn check_offer(side: Side, accepts: Accepts, body: &[u8]) -> Result<Offer, Refusal> {
    let who = side.who();
    if body.len() > MAX_OFFER_BYTES {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{who} offer of {} bytes is over the {MAX_OFFER_BYTES} byte limit",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| bad(format!("{who} offer is not UTF-8 text: not an SDP")))?;
    if !text.trim_start().starts_with("v=0") {
        return Err(bad(format!(
            "malformed SDP offer: it must start with the line v=0 (RFC 8866), found {:?}",
            text.chars().take(40).collect::<String>()
        )));
    }
    // Counted on the text: the parser would build every m-line first.
    let mlines = text.lines().filter(|l| l.starts_with("m=")).count();
    if mlines > MAX_MEDIA {
        return Err(bad(format!(
            "{who} offer has {mlines} m-lines: at most {MAX_MEDIA} are taken"
        )));
    }
    let sdp = gst_sdp::SDPMessage::parse_buffer(body)
        .map_err(|e| bad(format!("malformed SDP offer: {e}")))?;
    if sdp.medias_len() == 0 {
        return Err(bad(format!(
            "{who} offer has no m-line: send a video track"
        )));
    }

    check_session(who, &sdp)?;
    let mut video = None;
    let mut videos = 0;
    let mut offered = Vec::new();
    let mut wrong_direction = None;
    for (i, media) in sdp.medias().enumerate() {
        check_transport(who, i, &sdp, media)?;
        if !in_use(media) || media.media() != Some("video") {
            continue;
        }
        videos += 1;
        let codecs = codecs(media);
        let takes = codecs.iter().any(|c| accepts.codecs.contains(&c.as_str()));
        offered.extend(codecs);
        let direction = direction(media);
        let sends = matches!(direction, "sendrecv" | "sendonly");
        let receives = matches!(direction, "sendrecv" | "recvonly");
        let direction_ok = match side {
            Side::Publisher => sends,
            Side::Viewer => receives,
        };
        if !direction_ok {
            wrong_direction.get_or_insert((i, direction));
            continue;
        }
        if takes && video.is_none() {
            video = Some(i);
        }
    }
    if videos == 0 {
        return Err(bad(format!(
            "{who} offer has no video m-line in use: send a video track"
        )));
    }
    let Some(video) = video else {
        if let Some((i, direction)) = wrong_direction {
            let wanted = match side {
                Side::Publisher => "a publisher sends its video (sendonly)",
                Side::Viewer => "a viewer receives the video (recvonly)",
            };
            return Err(bad(format!(
                "{who} offer's video (m-line {i}) is {direction}: {wanted}"
            )));
        }
        offered.sort();
        offered.dedup();
        let supported = accepts.codecs;
        let hint = accepts.hint.map(|h| format!("; {h}")).unwrap_or_default();
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{who} offer has no video codec we take: offered {offered:?}, supported {supported:?}{hint}"
            ),
        ));
    };

    let sdp = match side {
        Side::Publisher => only_media(&sdp, video),
        Side::Viewer if accepts.any_h264_level => allow_h264_level_asymmetry(body),
        Side::Viewer => None,
    }
    .unwrap_or_else(|| body.to_vec());
    Ok(Offer { sdp })
}

/// An m-line is in use unless its port is 0 (rejected) without `a=bundle-only` (RFC 8843).
fn in_use(media: &gst_sdp::SDPMediaRef) -> bool {
    media.port() != 0 || media.attribute_val("bundle-only").is_some()
}

/// How many direction attributes the m-line has (one at most, RFC 8866).
fn directions(media: &gst_sdp::SDPMediaRef) -> usize {
    media
        .attributes()
        .filter(|a| matches!(a.key(), "sendrecv" | "sendonly" | "recvonly" | "inactive"))
        .count()
}

/// The m-line's direction attribute; sendrecv when it has none (RFC 8866).
fn direction(media: &gst_sdp::SDPMediaRef) -> &'static str {
    ["sendrecv", "sendonly", "recvonly", "inactive"]
        .into_iter()
        .find(|d| media.attributes().any(|a| a.key() == *d))
        .unwrap_or("sendrecv")
}

/// The encoding names (upper case) of the payload types the m-line lists, from their rtpmap
/// lines: an rtpmap for a payload type the m= line does not list is not offered (webrtcbin
/// then answers nothing, and the publisher's POST would wait for its answer in vain).
fn codecs(media: &gst_sdp::SDPMediaRef) -> Vec<String> {
    let listed: Vec<&str> = media.formats().collect();
    media
        .attributes()
        .filter(|a| a.key() == "rtpmap")
        .filter_map(|a| {
            let (pt, enc) = a.value()?.trim().split_once(' ')?;
            listed
                .contains(&pt)
                .then(|| Some(enc.split('/').next()?.trim().to_ascii_uppercase()))?
        })
        .collect()
}

/// The attribute `key` of the m-line, or of the session when the m-line has none.
fn attribute<'a>(
    sdp: &'a gst_sdp::SDPMessageRef,
    media: &'a gst_sdp::SDPMediaRef,
    key: &str,
) -> Option<&'a str> {
    media
        .attribute_val(key)
        .or_else(|| sdp.attribute_val(key))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// What holds for the offer as a whole: no `k=` line (keys in the clear), one DTLS
/// fingerprint, unique mids, and one set of ICE credentials per BUNDLE group.
fn check_session(who: &str, sdp: &gst_sdp::SDPMessageRef) -> Result<(), Refusal> {
    if sdp
        .key()
        .and_then(|k| k.data())
        .is_some_and(|d| !d.is_empty())
    {
        return Err(bad(format!(
            "{who} offer has a k= line: WebRTC keys come from DTLS, never in the SDP"
        )));
    }
    let session = sdp.attribute_val("fingerprint").map(str::trim);
    let mut first: Option<&str> = session;
    for (i, media) in sdp.medias().enumerate() {
        let Some(fp) = media.attribute_val("fingerprint").map(str::trim) else {
            continue;
        };
        if session.is_some() {
            return Err(bad(format!(
                "{who} offer, m-line {i}: a=fingerprint both at session level and on the m-line: give it once"
            )));
        }
        match first {
            Some(f) if f != fp => {
                return Err(bad(format!(
                    "{who} offer, m-line {i}: a=fingerprint differs from the one before it: one DTLS certificate per offer"
                )));
            }
            _ => first = Some(fp),
        }
    }
    let mut mids = std::collections::BTreeSet::new();
    for (i, media) in sdp.medias().enumerate() {
        if let Some(mid) = media.attribute_val("mid")
            && !mids.insert(mid.trim())
        {
            return Err(bad(format!(
                "{who} offer, m-line {i}: a=mid:{mid} is used twice"
            )));
        }
    }
    let bundle: Vec<&str> = sdp
        .attributes()
        .filter(|a| a.key() == "group")
        .filter_map(|a| a.value()?.strip_prefix("BUNDLE"))
        .flat_map(str::split_whitespace)
        .collect();
    let mut credentials = None;
    for (i, media) in sdp.medias().enumerate() {
        if !media
            .attribute_val("mid")
            .is_some_and(|m| bundle.contains(&m.trim()))
        {
            continue;
        }
        let own = (
            media.attribute_val("ice-ufrag"),
            media.attribute_val("ice-pwd"),
        );
        match credentials {
            Some(c) if c != own => {
                return Err(bad(format!(
                    "{who} offer, m-line {i}: ICE credentials differ from the rest of its BUNDLE group"
                )));
            }
            _ => credentials = Some(own),
        }
    }
    Ok(())
}

/// ICE, DTLS and transport of one m-line: what webrtcbin needs to answer it (it checks every
/// m-line, rejected ones too).
fn check_transport(
    who: &str,
    i: usize,
    sdp: &gst_sdp::SDPMessageRef,
    media: &gst_sdp::SDPMediaRef,
) -> Result<(), Refusal> {
    let kind = media.media().unwrap_or("?");
    let at = format!("{who} offer, m-line {i} ({kind})");
    let proto = media.proto().unwrap_or("");
    if kind == "application" {
        // A data channel (UDP/DTLS/SCTP): the same ICE and DTLS, checked below.
    } else if !matches!(
        proto,
        "UDP/TLS/RTP/SAVPF" | "UDP/TLS/RTP/SAVP" | "TCP/DTLS/RTP/SAVPF" | "TCP/DTLS/RTP/SAVP"
    ) {
        return Err(bad(format!(
            "{at}: transport {proto:?} is not DTLS-SRTP (WebRTC sends UDP/TLS/RTP/SAVPF)"
        )));
    }
    if directions(media) > 1 {
        return Err(bad(format!(
            "{at}: {} direction attributes: give one of sendrecv, sendonly, recvonly, inactive",
            directions(media)
        )));
    }
    if media
        .attribute_val("mid")
        .is_none_or(|m| m.trim().is_empty())
    {
        return Err(bad(format!(
            "{at}: no a=mid (every m-line needs one, RFC 8843)"
        )));
    }
    let ufrag = attribute(sdp, media, "ice-ufrag")
        .ok_or_else(|| bad(format!("{at}: no a=ice-ufrag (ICE credentials, RFC 8839)")))?;
    if !ice_chars(ufrag, 4) {
        return Err(bad(format!(
            "{at}: a=ice-ufrag must be 4 to 256 ICE characters (letters, digits, + and /)"
        )));
    }
    let pwd = attribute(sdp, media, "ice-pwd")
        .ok_or_else(|| bad(format!("{at}: no a=ice-pwd (ICE credentials, RFC 8839)")))?;
    if !ice_chars(pwd, 22) {
        return Err(bad(format!(
            "{at}: a=ice-pwd must be 22 to 256 ICE characters (letters, digits, + and /)"
        )));
    }
    let fingerprint = attribute(sdp, media, "fingerprint").ok_or_else(|| {
        bad(format!(
            "{at}: no a=fingerprint (the DTLS certificate's, RFC 8122)"
        ))
    })?;
    if let Err(why) = check_fingerprint(fingerprint) {
        return Err(bad(format!("{at}: a=fingerprint {why}")));
    }
    match media.attribute_val("setup").map(str::trim) {
        Some("actpass" | "active" | "passive") => Ok(()),
        Some(other) => Err(bad(format!(
            "{at}: a=setup:{other} is not a DTLS role (actpass, active or passive, RFC 8842)"
        ))),
        None => Err(bad(format!(
            "{at}: no a=setup on the m-line (the DTLS role, RFC 8842; an offer says actpass)"
        ))),
    }
}

/// `min` to 256 ICE characters: ALPHA / DIGIT / "+" / "/" (RFC 8839).
fn ice_chars(value: &str, min: usize) -> bool {
    (min..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `<hash function> <hex pairs separated by colons>` with as many bytes as the hash gives.
fn check_fingerprint(value: &str) -> Result<(), String> {
    let (hash, hex) = value
        .split_once(' ')
        .ok_or_else(|| "must be \"<hash function> <hex bytes>\"".to_string())?;
    let bytes = match hash.to_ascii_lowercase().as_str() {
        "sha-1" => 20,
        "sha-224" => 28,
        "sha-256" => 32,
        "sha-384" => 48,
        "sha-512" => 64,
        other => {
            return Err(format!(
                "hash function {other:?} is not one of sha-1, sha-224, sha-256, sha-384, sha-512"
            ));
        }
    };
    let pairs: Vec<&str> = hex.trim().split(':').collect();
    let well_formed = pairs.len() == bytes
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(format!(
            "must give {bytes} hex bytes separated by colons for {hash}"
        ));
    }
    Ok(())
}

/// The offer with every audio and video m-line but `keep` made `inactive`; `None` when
/// there is none to change.
fn only_media(sdp: &gst_sdp::SDPMessageRef, keep: usize) -> Option<Vec<u8>> {
    let mut sdp = sdp.to_owned();
    let mut changed = false;
    for (i, media) in sdp.medias_mut().enumerate() {
        if i == keep
            || !matches!(media.media(), Some("audio" | "video"))
            || direction(media) == "inactive"
        {
            continue;
        }
        // Remove the direction attributes (from the end, so the indices stay valid).
        let directions: Vec<u32> = (0..media.attributes_len())
            .filter(|&a| {
                media.attribute(a).is_some_and(|a| {
                    matches!(a.key(), "sendrecv" | "sendonly" | "recvonly" | "inactive")
                })
            })
            .collect();
        for a in directions.into_iter().rev() {
            media.remove_attribute(a).ok()?;
        }
        media.add_attribute("inactive", None);
        changed = true;
    }
    if !changed {
        return None;
    }
    sdp.as_text().ok().map(String::into_bytes)
}

/// Adds `level-asymmetry-allowed=1` to each H264 format of the offer's video m-lines that
/// lacks it; `None` when there is none to change (or the offer does not parse).
///
/// Browsers offer H264 with `level-asymmetry-allowed=1`, so the WebRTC sink drops the
/// offered `profile-level-id` and payloads the shared encoder's stream as it is. GStreamer's
/// `whepclientsrc` (gst-plugins-rs 0.15) offers `profile-level-id=42e016` (constrained
/// baseline, level 2.2, fixed in its code) without it: the sink then finds no H264 format
/// that matches the stream (level 3 at 512 x 512, 30 fps) and answers the video `inactive`,
/// so that viewer gets no picture. Its decoder takes any level, as browsers' do.
pub fn allow_h264_level_asymmetry(body: &[u8]) -> Option<Vec<u8>> {
    let mut sdp = gst_sdp::SDPMessage::parse_buffer(body).ok()?;
    let mut changed = false;
    for media in sdp.medias_mut() {
        if media.media() != Some("video") {
            continue;
        }
        // The payload types of H264.
        let h264: Vec<String> = media
            .attributes()
            .filter(|a| a.key() == "rtpmap")
            .filter_map(|a| {
                let (pt, enc) = a.value()?.split_once(' ')?;
                enc.to_ascii_uppercase()
                    .starts_with("H264/")
                    .then(|| pt.trim().to_string())
            })
            .collect();
        for pt in h264 {
            // `a=fmtp:<pt> <parameters>`, the parameters separated by `;`.
            let fmtp = (0..media.attributes_len()).find(|&i| {
                media.attribute(i).is_some_and(|a| {
                    a.key() == "fmtp"
                        && a.value()
                            .and_then(|v| v.split_whitespace().next())
                            .is_some_and(|p| p == pt)
                })
            });
            match fmtp {
                Some(i) => {
                    let value = media.attribute(i).and_then(|a| a.value()).unwrap_or("");
                    let params = value.trim()[pt.len()..].trim();
                    if params.contains("level-asymmetry-allowed") {
                        continue;
                    }
                    let value = if params.is_empty() {
                        format!("{pt} level-asymmetry-allowed=1")
                    } else {
                        format!("{pt} {params};level-asymmetry-allowed=1")
                    };
                    let attr = gst_sdp::SDPAttribute::new("fmtp", Some(&value));
                    media.replace_attribute(i, attr).ok()?;
                }
                None => {
                    media.add_attribute("fmtp", Some(&format!("{pt} level-asymmetry-allowed=1")));
                }
            }
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    sdp.as_text().ok().map(String::into_bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// ICE and DTLS lines every offer needs (a browser's, shortened), at session level.
    pub const TRANSPORT: &str = "a=ice-ufrag:Wt8x\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\r\n";

    /// A publisher's offer: the transport lines at session level, the DTLS role on the m-line.
    pub fn offer(codec: &str, direction: &str) -> String {
        format!(
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n{TRANSPORT}\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\n\
a=rtpmap:96 {codec}/90000\r\na=rtpmap:97 rtx/90000\r\na={direction}\r\n"
        )
    }

    fn init() {
        let _ = gst::init();
    }

    fn refused(side: Side, accepts: Accepts, sdp: &str) -> Refusal {
        check_offer(side, accepts, sdp.as_bytes()).expect_err("refused")
    }

    #[test]
    fn a_video_offer_in_a_codec_we_take_passes_unchanged() {
        init();
        let sdp = offer("VP8", "sendonly");
        let ok = check_offer(Side::Publisher, Accepts::ALL, sdp.as_bytes()).unwrap();
        assert_eq!(ok.sdp, sdp.as_bytes(), "nothing to narrow");
    }

    #[test]
    fn garbage_is_a_malformed_sdp() {
        init();
        let (status, text) = refused(Side::Publisher, Accepts::ALL, "hello world");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("malformed SDP"), "{text}");
    }

    #[test]
    fn audio_only_is_refused_for_want_of_video() {
        init();
        let audio = offer("opus", "sendonly")
            .replace("m=video", "m=audio")
            .replace("opus/90000", "opus/48000/2");
        let (status, text) = refused(Side::Publisher, Accepts::ALL, &audio);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("no video"), "{text}");
    }

    #[test]
    fn only_the_payload_types_the_m_line_lists_are_offered() {
        init();
        // VP8 has an rtpmap line but the m= line lists only 98 (which has none).
        let unlisted = offer("VP8", "sendonly").replace("SAVPF 96 97", "SAVPF 98");
        let (status, text) = refused(Side::Publisher, Accepts::ALL, &unlisted);
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(text.contains("offered []"), "{text}");
    }

    #[test]
    fn an_unsupported_codec_is_named() {
        init();
        let av1 = offer("AV1", "recvonly");
        let (status, text) = refused(Side::Viewer, Accepts::ALL, &av1);
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(text.contains("AV1") && text.contains("H264"), "{text}");
    }

    /// The 9-line offer of the attack: a video m-line and nothing else.
    const BARE: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n\
a=sendonly\r\na=mid:0\r\n";

    #[test]
    fn ice_credentials_fingerprint_and_setup_are_required() {
        init();
        let (status, text) = refused(Side::Publisher, Accepts::ALL, BARE);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            text.contains("m-line 0 (video)") && text.contains("no a=ice-ufrag"),
            "{text}"
        );
        let full = offer("VP8", "sendonly");
        for (line, what) in [
            ("a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", "no a=ice-pwd"),
            ("a=setup:actpass\r\n", "no a=setup"),
            ("a=mid:0\r\n", "no a=mid"),
        ] {
            let text = refused(Side::Publisher, Accepts::ALL, &full.replace(line, "")).1;
            assert!(text.contains(what), "{what}: {text}");
        }
        let fp = full
            .lines()
            .find(|l| l.starts_with("a=fingerprint"))
            .unwrap();
        let text = refused(
            Side::Publisher,
            Accepts::ALL,
            &full.replace(&format!("{fp}\r\n"), ""),
        )
        .1;
        assert!(text.contains("no a=fingerprint"), "{text}");
        for (from, to, what) in [
            (
                "ice-pwd:abcdefghijklmnopqrstuvwx",
                "ice-pwd:short",
                "22 to 256",
            ),
            ("ice-ufrag:Wt8x", "ice-ufrag:W t", "4 to 256"),
            ("setup:actpass", "setup:holdconn", "not a DTLS role"),
            ("sha-256 AB:CD", "md5 AB:CD", "not one of sha-1"),
            ("sha-256 AB:CD", "sha-1 AB:CD", "20 hex bytes"),
            ("UDP/TLS/RTP/SAVPF", "RTP/AVP", "not DTLS-SRTP"),
            (
                "a=sendonly",
                "a=sendonly\r\na=recvonly",
                "2 direction attributes",
            ),
        ] {
            let text = refused(Side::Publisher, Accepts::ALL, &full.replace(from, to)).1;
            assert!(text.contains(what), "{what}: {text}");
        }
        // Per m-line credentials do as well as session-level ones.
        let media_level = full
            .replace(TRANSPORT, "")
            .replace("a=mid:0\r\n", &format!("a=mid:0\r\n{TRANSPORT}"));
        assert!(check_offer(Side::Publisher, Accepts::ALL, media_level.as_bytes()).is_ok());
        // webrtcbin takes the DTLS role from the m-line only, and one fingerprint.
        let session_setup = full
            .replace("a=setup:actpass\r\n", "")
            .replace(TRANSPORT, &format!("{TRANSPORT}a=setup:actpass\r\n"));
        let text = refused(Side::Publisher, Accepts::ALL, &session_setup).1;
        assert!(text.contains("no a=setup on the m-line"), "{text}");
        let twice = full.replace("a=mid:0\r\n", &format!("a=mid:0\r\n{fp}\r\n"));
        let text = refused(Side::Publisher, Accepts::ALL, &twice).1;
        assert!(
            text.contains("both at session level and on the m-line"),
            "{text}"
        );
        let keyed = full.replace("t=0 0\r\n", "t=0 0\r\nk=clear:secret\r\n");
        let text = refused(Side::Publisher, Accepts::ALL, &keyed).1;
        assert!(text.contains("k= line"), "{text}");
    }

    #[test]
    fn a_rejected_m_line_is_checked_too_and_bundles_share_credentials() {
        init();
        let full = offer("VP8", "sendonly");
        // A second, rejected (port 0) m-line without a mid: webrtcbin would refuse it.
        let rejected =
            "m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n";
        let text = refused(Side::Publisher, Accepts::ALL, &format!("{full}{rejected}")).1;
        assert!(text.contains("m-line 1 (audio): no a=mid"), "{text}");
        // Two bundled m-lines with their own, different credentials.
        let own = |ufrag: &str| {
            format!(
                "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{ufrag}\r\na=setup:actpass\r\n\
a=ice-ufrag:{ufrag}\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=rtpmap:96 VP8/90000\r\na=sendonly\r\n"
            )
        };
        let head = full[..full.find("m=video").unwrap()].replace("a=ice-ufrag:Wt8x\r\n", "");
        let bundled = format!(
            "{head}a=group:BUNDLE aaaa bbbb\r\n{}{}",
            own("aaaa"),
            own("bbbb")
        );
        let text = refused(Side::Publisher, Accepts::ALL, &bundled).1;
        assert!(text.contains("m-line 1: ICE credentials differ"), "{text}");
        let same = bundled.replace("ice-ufrag:bbbb", "ice-ufrag:aaaa");
        assert!(check_offer(Side::Publisher, Accepts::ALL, same.as_bytes()).is_ok());
        let mid_twice = same.replace("a=mid:bbbb", "a=mid:aaaa");
        let text = refused(Side::Publisher, Accepts::ALL, &mid_twice).1;
        assert!(text.contains("a=mid:aaaa is used twice"), "{text}");
    }

    #[test]
    fn hundreds_of_m_lines_are_refused_before_parsing() {
        init();
        let mut sdp = offer("VP8", "sendonly");
        let mline = sdp[sdp.find("m=video").unwrap()..].to_string();
        for _ in 0..299 {
            sdp.push_str(&mline);
        }
        let (status, text) = refused(Side::Publisher, Accepts::ALL, &sdp);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            text.contains("300 m-lines") && text.contains("at most 16"),
            "{text}"
        );
    }

    #[test]
    fn the_video_must_go_the_right_way() {
        init();
        let text = refused(Side::Publisher, Accepts::ALL, &offer("VP8", "recvonly")).1;
        assert!(
            text.contains("is recvonly") && text.contains("sendonly"),
            "{text}"
        );
        let text = refused(Side::Viewer, Accepts::ALL, &offer("VP8", "sendonly")).1;
        assert!(
            text.contains("is sendonly") && text.contains("recvonly"),
            "{text}"
        );
        assert!(
            check_offer(
                Side::Viewer,
                Accepts::ALL,
                offer("VP8", "sendrecv").as_bytes()
            )
            .is_ok()
        );
        // A rejected m-line (port 0) is not in use and needs nothing.
        let rejected = offer("VP8", "sendonly").replace("m=video 9", "m=video 0");
        let text = refused(Side::Publisher, Accepts::ALL, &rejected).1;
        assert!(text.contains("no video m-line in use"), "{text}");
    }

    #[test]
    fn a_publisher_offer_is_narrowed_to_one_video_m_line() {
        init();
        // OBS: audio first, then video; a second video m-line after it.
        let video = offer("H264", "sendonly");
        let head = &video[..video.find("m=video").unwrap()];
        let vline = &video[video.find("m=video").unwrap()..];
        let sdp = format!(
            "{head}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:a\r\n\
a=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\na=sendonly\r\n{vline}{}",
            vline.replace("a=mid:0", "a=mid:1")
        );
        let ok = check_offer(Side::Publisher, Accepts::ALL, sdp.as_bytes()).unwrap();
        let out = gst_sdp::SDPMessage::parse_buffer(&ok.sdp).unwrap();
        let directions: Vec<_> = out.medias().map(direction).collect();
        assert_eq!(directions, ["inactive", "sendonly", "inactive"]);
        assert_eq!(out.medias_len(), 3, "the m-lines stay, in order");
        assert_eq!(out.media(1).unwrap().attribute_val("mid"), Some("0"));
    }

    /// The video m-line of GStreamer's `whepclientsrc` (gst-plugins-rs 0.15), shortened.
    fn gst_whep_offer() -> String {
        format!(
            "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{TRANSPORT}\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\na=rtcp-fb:97 nack pli\r\n\
a=fmtp:97 profile-level-id=42e016\r\na=rtpmap:98 h264/90000\r\na=rtpmap:99 H264/90000\r\n\
a=fmtp:99\r\na=mid:video0\r\na=setup:actpass\r\n\
m=audio 0 UDP/TLS/RTP/SAVPF 101\r\nc=IN IP4 0.0.0.0\r\na=mid:audio0\r\na=setup:actpass\r\n\
a=rtpmap:101 H264/90000\r\n"
        )
    }

    fn fmtp_lines(sdp: &str) -> Vec<&str> {
        sdp.lines().filter(|l| l.starts_with("a=fmtp:")).collect()
    }

    #[test]
    fn h264_offers_without_level_asymmetry_are_given_it() {
        init();
        let sdp = gst_whep_offer();
        let out = allow_h264_level_asymmetry(sdp.as_bytes()).expect("changed");
        let out = String::from_utf8(out).unwrap();
        let fmtp = fmtp_lines(&out);
        // The H264 payloads of the video m-line (one had no fmtp, one an empty one), nothing
        // for VP8 or audio.
        assert_eq!(
            fmtp,
            [
                "a=fmtp:97 profile-level-id=42e016;level-asymmetry-allowed=1",
                "a=fmtp:99 level-asymmetry-allowed=1",
                "a=fmtp:98 level-asymmetry-allowed=1"
            ],
            "{out}"
        );
        assert!(out.contains("a=rtpmap:96 VP8/90000") && out.contains("a=mid:video0"));
        // It still passes the checks and parses.
        assert!(check_offer(Side::Viewer, Accepts::ALL, out.as_bytes()).is_ok());
        // Offers that have it (browsers), or no H264, pass unchanged.
        assert!(allow_h264_level_asymmetry(out.as_bytes()).is_none());
        assert!(allow_h264_level_asymmetry(offer("VP8", "recvonly").as_bytes()).is_none());
        assert!(allow_h264_level_asymmetry(b"not an sdp").is_none());
    }

    #[test]
    fn a_narrower_endpoint_names_the_property_that_widens_it() {
        init();
        let h264_only = Accepts {
            codecs: &["H264"],
            hint: Some("set codec=vp8"),
            any_h264_level: true,
        };
        let (status, text) = refused(Side::Viewer, h264_only, &offer("VP8", "recvonly"));
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            text.contains("VP8") && text.contains("[\"H264\"]") && text.contains("codec=vp8"),
            "{text}"
        );
        let ok = check_offer(
            Side::Viewer,
            h264_only,
            offer("H264", "recvonly").as_bytes(),
        );
        let sdp = String::from_utf8(ok.unwrap().sdp).unwrap();
        assert!(sdp.contains("a=fmtp:96 level-asymmetry-allowed=1"), "{sdp}");
    }

    #[test]
    fn a_huge_offer_is_refused() {
        init();
        let big = format!(
            "{}{}",
            offer("VP8", "sendonly"),
            "a=x\r\n".repeat(MAX_OFFER_BYTES / 4)
        );
        assert_eq!(
            refused(Side::Publisher, Accepts::ALL, &big).0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
