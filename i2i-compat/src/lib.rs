// SPDX-License-Identifier: MPL-2.0
//! The names users typed before the one vocabulary (docs/properties.md) keep working for
//! one release, for all three plugins:
//!
//! - a renamed property keeps its old name as a second ParamSpec ([`param_specs`]): the
//!   new one's type, range, default, nick and flags, plus `DEPRECATED`, with the blurb
//!   "Deprecated: use NEW" that gst-inspect-1.0 shows. The element's `set_property` and
//!   `property` ask [`Deprecations::resolve`] for the name to act on, which warns once per
//!   element instance and old name: a WARNING debug line and an element WARNING message
//!   (held until the element has a bus: a gst-launch-1.0 line sets properties before it
//!   builds the pipeline; [`Deprecations::post_pending`] posts it at the first state
//!   change);
//! - a renamed stats field is also filled under its old name ([`with_old_fields`]).
//!
//! The plugins' tests check their names here too ([`check_renamed`],
//! [`check_enums_are_plugin_api`]).
//!
//! Once the old names are gone this crate goes with them.

use std::sync::Mutex;

use gst::glib;
use gst::prelude::*;

/// A renamed property: `old` still works, forwarding to `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    pub old: &'static str,
    pub new: &'static str,
}

/// A renamed property of an element: the table a plugin exports for its tests and docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementAlias {
    pub element: &'static str,
    pub old: &'static str,
    pub new: &'static str,
}

/// The blurb of a deprecated name.
pub fn deprecated_blurb(new: &str) -> String {
    format!("Deprecated: use {new}")
}

/// The ParamSpec of the old name `old` of `new`: same type, range, default, nick and
/// flags, flagged `DEPRECATED`. Panics for a type it does not know (a programming error
/// the plugin's alias test finds at once).
pub fn param_spec(old: &str, new: &glib::ParamSpec) -> glib::ParamSpec {
    let flags = new.flags() | glib::ParamFlags::DEPRECATED;
    let blurb = deprecated_blurb(new.name());
    let nick = new.nick();
    macro_rules! numeric {
        ($($t:ty),*) => {$(
            if let Some(p) = new.downcast_ref::<$t>() {
                return <$t>::builder(old)
                    .nick(nick)
                    .blurb(&blurb)
                    .minimum(p.minimum())
                    .maximum(p.maximum())
                    .default_value(p.default_value())
                    .flags(flags)
                    .build();
            }
        )*};
    }
    numeric!(
        glib::ParamSpecInt,
        glib::ParamSpecUInt,
        glib::ParamSpecInt64,
        glib::ParamSpecUInt64,
        glib::ParamSpecDouble
    );
    if let Some(p) = new.downcast_ref::<glib::ParamSpecString>() {
        return glib::ParamSpecString::builder(old)
            .nick(nick)
            .blurb(&blurb)
            .default_value(p.default_value())
            .flags(flags)
            .build();
    }
    if let Some(p) = new.downcast_ref::<glib::ParamSpecBoolean>() {
        return glib::ParamSpecBoolean::builder(old)
            .nick(nick)
            .blurb(&blurb)
            .default_value(p.default_value())
            .flags(flags)
            .build();
    }
    panic!(
        "no deprecated alias for {} properties ({old} -> {})",
        new.value_type(),
        new.name()
    );
}

/// `specs` and, after them, the old name of each alias (whose new name is in `specs`).
pub fn param_specs(
    specs: impl IntoIterator<Item = glib::ParamSpec>,
    aliases: &[Alias],
) -> Vec<glib::ParamSpec> {
    let mut specs: Vec<glib::ParamSpec> = specs.into_iter().collect();
    for a in aliases {
        let new = specs
            .iter()
            .find(|p| p.name() == a.new)
            .unwrap_or_else(|| panic!("alias {} of a property {} not registered", a.old, a.new))
            .clone();
        specs.push(param_spec(a.old, &new));
    }
    specs
}

#[derive(Default)]
struct State {
    warned: Vec<&'static str>,
    /// Warnings made while the element had no bus yet.
    pending: Vec<gst::Message>,
}

/// The deprecation warnings of one element instance: once per old name.
#[derive(Default)]
pub struct Deprecations {
    state: Mutex<State>,
}

impl Deprecations {
    /// The property name to act on: the new name for an old one in `aliases` (warning the
    /// first time this instance meets that old name), else `name` itself.
    pub fn resolve<'a>(
        &self,
        element: &impl IsA<gst::Element>,
        cat: gst::DebugCategory,
        aliases: &'static [Alias],
        name: &'a str,
    ) -> &'a str {
        let Some(a) = aliases.iter().find(|a| a.old == name) else {
            return name;
        };
        self.warn_once(element, cat, a.old, &format!("use {}", a.new));
        a.new
    }

    /// Warns once for `old` (an old name the element handles itself, e.g. one whose unit
    /// changed): `instead` says what to use ("use playout-delay (ms)").
    pub fn warn_once(
        &self,
        element: &impl IsA<gst::Element>,
        cat: gst::DebugCategory,
        old: &'static str,
        instead: &str,
    ) {
        let element = element.upcast_ref::<gst::Element>();
        let mut state = self.state.lock().unwrap();
        if state.warned.contains(&old) {
            return;
        }
        state.warned.push(old);
        let text = format!(
            "Property {old} is deprecated and will be removed in the next release: {instead}"
        );
        gst::warning!(cat, obj = element, "{text}");
        let msg = gst::message::Warning::builder(gst::LibraryError::Settings, &text)
            .src(element)
            .build();
        if element.bus().is_some() {
            drop(state);
            let _ = element.post_message(msg);
        } else {
            state.pending.push(msg);
        }
    }

    /// Posts the warnings made before the element had a bus; from `change_state`.
    pub fn post_pending(&self, element: &impl IsA<gst::Element>) {
        let element = element.upcast_ref::<gst::Element>();
        if element.bus().is_none() {
            return;
        }
        let pending = std::mem::take(&mut self.state.lock().unwrap().pending);
        for msg in pending {
            let _ = element.post_message(msg);
        }
    }
}

/// Fills each renamed stats field under its old name too, `(old, new)`: readers of the
/// old names keep working for one release (docs/properties.md lists them).
pub fn with_old_fields(s: &mut gst::StructureRef, renamed: &[(&str, &str)]) {
    for (old, new) in renamed {
        if let Ok(v) = s.value(*new) {
            let v = v.clone();
            s.set_value(*old, v);
        }
    }
}

/// An instance of each element of `plugin` that this project wrote (its author metadata),
/// with its factory.
fn own_elements(plugin: &str) -> Vec<(gst::ElementFactory, gst::Element)> {
    gst::Registry::get()
        .features_by_plugin(plugin)
        .into_iter()
        .filter_map(|f| f.downcast::<gst::ElementFactory>().ok())
        .filter(|f| f.metadata(gst::ELEMENT_METADATA_AUTHOR) == Some("i2i developers"))
        .map(|f| {
            let e = f.create().build().unwrap();
            (f, e)
        })
        .collect()
}

/// For the plugins' tests: every old name of `renamed` is flagged deprecated, still
/// works (set and get forward to the new name) and warns once per element instance, at
/// once in a pipeline, else at the element's first state change (`prepare` makes an
/// element safe to take to READY: a free port, say); and every deprecated property of
/// the plugin's own elements (`plugin`) is in `renamed`.
pub fn check_renamed(plugin: &str, renamed: &[ElementAlias], prepare: impl Fn(&gst::Element)) {
    for a in renamed {
        check_one(a, &prepare);
    }
    for (factory, e) in own_elements(plugin) {
        for p in e.list_properties() {
            if p.owner_type() == e.type_() && p.flags().contains(glib::ParamFlags::DEPRECATED) {
                assert!(
                    renamed
                        .iter()
                        .any(|a| a.element == factory.name() && a.old == p.name()),
                    "{}: deprecated {} is not in the table of renamed properties",
                    factory.name(),
                    p.name()
                );
            }
        }
    }
}

/// For the plugins' tests: the enum (and flags) type of every property of the plugin's own
/// elements is marked as plugin API, so gst-inspect-1.0 and the documentation list it.
pub fn check_enums_are_plugin_api(plugin: &str) {
    let mut seen = 0;
    for (factory, e) in own_elements(plugin) {
        for p in e.list_properties() {
            let t = p.value_type();
            if p.owner_type() == e.type_()
                && (t.is_a(glib::Type::ENUM) || t.is_a(glib::Type::FLAGS))
            {
                assert!(
                    t.plugin_api_flags().is_some(),
                    "{}: the type of {} ({t}) is not marked as plugin API",
                    factory.name(),
                    p.name()
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 0, "no enum property in plugin {plugin}");
}

/// A value other than the default, within the range.
fn test_value(p: &glib::ParamSpec) -> glib::Value {
    macro_rules! mid {
        ($($t:ty),*) => {$(
            if let Some(p) = p.downcast_ref::<$t>() {
                let mid = p.minimum() / 2 + p.maximum() / 2;
                let v = if mid == p.default_value() { p.minimum() } else { mid };
                return v.to_value();
            }
        )*};
    }
    mid!(
        glib::ParamSpecInt,
        glib::ParamSpecUInt,
        glib::ParamSpecInt64,
        glib::ParamSpecUInt64
    );
    if let Some(p) = p.downcast_ref::<glib::ParamSpecBoolean>() {
        return (!p.default_value()).to_value();
    }
    if p.downcast_ref::<glib::ParamSpecString>().is_some() {
        return "renamed-test".to_value();
    }
    panic!("no test value for {} ({})", p.name(), p.value_type());
}

/// `Value` has no equality: its printed type and contents stand for it.
fn same(a: &glib::Value, b: &glib::Value) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// The deprecation warnings `e` posted on `bus` so far that name `old`.
fn warnings(bus: &gst::Bus, e: &gst::Element, old: &str, new: &str) -> usize {
    let mut n = 0;
    while let Some(m) = bus.pop_filtered(&[gst::MessageType::Warning]) {
        let gst::MessageView::Warning(w) = m.view() else {
            continue;
        };
        let text = w.error().to_string();
        if m.src() == Some(e.upcast_ref()) && text.contains(old) {
            assert!(text.contains(new), "{text}");
            n += 1;
        }
    }
    n
}

fn check_one(a: &ElementAlias, prepare: &impl Fn(&gst::Element)) {
    let make = || gst::ElementFactory::make(a.element).build().unwrap();
    let what = format!("{} {} -> {}", a.element, a.old, a.new);
    let e = make();
    let old = e
        .find_property(a.old)
        .unwrap_or_else(|| panic!("{what}: no old name"));
    let new = e
        .find_property(a.new)
        .unwrap_or_else(|| panic!("{what}: no new name"));
    assert!(old.flags().contains(glib::ParamFlags::DEPRECATED), "{what}");
    assert!(
        !new.flags().contains(glib::ParamFlags::DEPRECATED),
        "{what}"
    );
    assert!(
        old.blurb()
            .is_some_and(|b| b.starts_with(&deprecated_blurb(a.new))),
        "{what}: {:?}",
        old.blurb()
    );
    assert_eq!(old.owner_type(), e.type_(), "{what}");

    // In a pipeline: forwarded both ways, one warning however often the old name is used.
    let pipeline = gst::Pipeline::new();
    pipeline.add(&e).unwrap();
    let bus = pipeline.bus().unwrap();
    let same_type = old.value_type() == new.value_type();
    if old.flags().contains(glib::ParamFlags::WRITABLE) {
        let v = test_value(&old);
        e.set_property_from_value(a.old, &v);
        assert!(same(&e.property_value(a.old), &v), "{what}: read back");
        let now = e.property_value(a.new);
        if same_type {
            assert!(same(&now, &v), "{what}: {now:?} under the new name");
            let v2 = test_value(&new);
            let v2 = if same(&v2, &v) {
                new.default_value().clone()
            } else {
                v2
            };
            e.set_property_from_value(a.new, &v2);
            assert!(same(&e.property_value(a.old), &v2), "{what}: new to old");
        } else {
            assert!(
                !same(&now, new.default_value()),
                "{what}: {now:?} unchanged"
            );
        }
        e.set_property_from_value(a.old, &v);
    } else {
        assert!(
            same(&e.property_value(a.old), &e.property_value(a.new)),
            "{what}"
        );
    }
    let _ = e.property_value(a.old);
    assert_eq!(warnings(&bus, &e, a.old, a.new), 1, "{what}: warnings");

    // Another element of the same kind warns for itself; the new name never warns.
    let e2 = make();
    pipeline.add(&e2).unwrap();
    let _ = e2.property_value(a.new);
    assert_eq!(warnings(&bus, &e2, a.old, a.new), 0, "{what}: the new name");
    let _ = e2.property_value(a.old);
    assert_eq!(
        warnings(&bus, &e2, a.old, a.new),
        1,
        "{what}: a second element"
    );

    // Set before the element is in a pipeline (as gst-launch-1.0 does): posted at its
    // first state change.
    let e3 = make();
    prepare(&e3);
    let _ = e3.property_value(a.old);
    let p3 = gst::Pipeline::new();
    p3.add(&e3).unwrap();
    let bus3 = p3.bus().unwrap();
    assert_eq!(
        warnings(&bus3, &e3, a.old, a.new),
        0,
        "{what}: before READY"
    );
    e3.set_state(gst::State::Ready).unwrap();
    assert_eq!(warnings(&bus3, &e3, a.old, a.new), 1, "{what}: at READY");
    e3.set_state(gst::State::Null).unwrap();
    let _ = pipeline.set_state(gst::State::Null);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_name_mirrors_the_new_spec() {
        gst::init().unwrap();
        let new = glib::ParamSpecUInt::builder("max-queue")
            .nick("Max queue")
            .blurb("Frames held")
            .minimum(1)
            .maximum(100)
            .default_value(7)
            .mutable_playing()
            .build();
        let old = param_spec("max-frames", &new);
        let o = old.downcast_ref::<glib::ParamSpecUInt>().unwrap();
        assert_eq!((o.minimum(), o.maximum(), o.default_value()), (1, 100, 7));
        assert_eq!(old.nick(), "Max queue");
        assert_eq!(old.blurb(), Some("Deprecated: use max-queue"));
        assert_eq!(
            old.flags(),
            new.flags() | glib::ParamFlags::DEPRECATED,
            "{:?}",
            old.flags()
        );

        let ro = glib::ParamSpecString::builder("last-endpoint")
            .read_only()
            .build();
        let specs = param_specs(
            [ro],
            &[Alias {
                old: "bound-endpoint",
                new: "last-endpoint",
            }],
        );
        assert_eq!(specs.len(), 2);
        assert!(!specs[1].flags().contains(glib::ParamFlags::WRITABLE));
        assert!(specs[1].flags().contains(glib::ParamFlags::DEPRECATED));
    }

    #[test]
    fn old_stats_fields_carry_the_new_values() {
        gst::init().unwrap();
        let mut s = gst::Structure::builder("x-stats")
            .field("dropped-oversize", 3u64)
            .build();
        with_old_fields(
            &mut s,
            &[("oversize", "dropped-oversize"), ("gone", "missing")],
        );
        assert_eq!(s.get::<u64>("oversize").unwrap(), 3);
        assert!(!s.has_field("gone"));
    }
}
