//! Reloads that take over the devices of unchanged included files.

use std::fs;
use std::path::Path;

use crate::config::sources::Stamp;
use crate::config::{load, load_reusing, Resolved, Reuse};

const MAIN: &str = "gateway: { namespace: t }\ninclude: devices/*.yaml\ndevices:\n  - { name: m1, driver: dummy, properties: [ { name: p, type: uint32, simulate: { constant: 1 } } ] }\n";

fn dummies(names: &[&str]) -> String {
    let mut y = String::from("devices:\n");
    for n in names {
        y.push_str(&format!(
            "  - {{ name: {n}, driver: dummy, properties: [ {{ name: p, type: uint32, simulate: {{ constant: 1 }} }} ] }}\n"
        ));
    }
    y
}

fn names(r: &Resolved) -> Vec<&str> {
    r.devices.iter().map(|d| d.name.as_str()).collect()
}

/// A config dir: main file, `devices/a.yaml` and `devices/b.yaml`.
fn setup(a: &str, b: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("devices")).expect("mkdir");
    fs::write(dir.path().join("devices/a.yaml"), a).expect("a");
    fs::write(dir.path().join("devices/b.yaml"), b).expect("b");
    let main = dir.path().join("config.yaml");
    fs::write(&main, MAIN).expect("main");
    (dir, main)
}

/// The stamps `first` was read with, except for the files in `changed`.
fn now_except<'a>(
    first: &'a Resolved,
    changed: &'a [&Path],
) -> impl Fn(&Path) -> Option<Stamp> + 'a {
    move |p: &Path| {
        if changed.contains(&p) {
            Stamp::read(p).map(|_| Stamp::read(Path::new("/")).expect("stamp of /"))
        } else {
            first.sources.stamp_of(p)
        }
    }
}

#[test]
fn only_the_changed_file_is_read_again() {
    let (dir, main) = setup(&dummies(&["a1", "a2"]), &dummies(&["b1"]));
    let first = load(&main).expect("first load");
    assert_eq!(names(&first), ["m1", "a1", "a2", "b1"]);
    assert_eq!(first.sources.stamps.len(), 3, "{:?}", first.sources.stamps);
    // a.yaml is rewritten but reported unchanged: its devices must come
    // from the running config, which proves it was not read again.
    let a = dir.path().join("devices/a.yaml");
    let b = dir.path().join("devices/b.yaml");
    fs::write(&a, dummies(&["x1"])).expect("a");
    fs::write(&b, dummies(&["b1", "b2"])).expect("b");
    let changed = [b.as_path()];
    let reuse = Reuse::new(&first, &main, now_except(&first, &changed));
    assert_eq!(reuse.files(), 1);
    let next = load_reusing(&main, reuse).expect("reload");
    assert_eq!(names(&next), ["m1", "a1", "a2", "b1", "b2"]);
    // The same settings, not a copy read again.
    assert!(std::sync::Arc::ptr_eq(&first.devices[1], &next.devices[1]));
    assert_eq!(
        next.sources.file_of("a1"),
        Some(a.display().to_string().as_str())
    );
    assert_eq!(next.sources.stamp_of(&a), first.sources.stamp_of(&a));
    // A full load reads a.yaml as it is now.
    assert_eq!(names(&load(&main).expect("full")), ["m1", "x1", "b1", "b2"]);
}

#[test]
fn a_new_device_that_repeats_a_kept_name_or_topic_is_the_error() {
    let (dir, main) = setup(&dummies(&["a1"]), &dummies(&["b1"]));
    let first = load(&main).expect("first load");
    let b = dir.path().join("devices/b.yaml");
    fs::write(&b, dummies(&["b1", "a1"])).expect("b");
    let changed = [b.as_path()];
    let errors = load_reusing(
        &main,
        Reuse::new(&first, &main, now_except(&first, &changed)),
    )
    .expect_err("duplicate name")
    .0;
    assert!(
        errors
            .iter()
            .any(|e| e.file.ends_with("b.yaml") && e.message.contains("duplicate device name `a1`")),
        "{errors:?}"
    );
}

#[test]
fn nothing_is_kept_when_the_main_file_or_the_file_changed() {
    let (dir, main) = setup(&dummies(&["a1"]), &dummies(&["b1"]));
    let first = load(&main).expect("first load");
    let changed = [main.as_path()];
    assert!(Reuse::new(&first, &main, now_except(&first, &changed)).is_empty());
    let a = dir.path().join("devices/a.yaml");
    let b = dir.path().join("devices/b.yaml");
    let both = [a.as_path(), b.as_path()];
    assert!(Reuse::new(&first, &main, now_except(&first, &both)).is_empty());
    // A file that is gone is not kept either.
    fs::remove_file(&a).expect("rm");
    let gone = |p: &Path| Stamp::read(p).and_then(|_| first.sources.stamp_of(p));
    let reuse = Reuse::new(&first, &main, gone);
    assert_eq!(reuse.files(), 1);
    assert_eq!(
        names(&load_reusing(&main, reuse).expect("reload")),
        ["m1", "b1"]
    );
}

#[test]
fn devices_that_read_more_than_their_yaml_are_read_again() {
    // A device with a session of its own: its file is read again.
    let own_session = "devices:\n  - { name: a1, driver: dummy, mqtt: { client: { clientId: other } }, properties: [ { name: p, type: uint32, simulate: { constant: 1 } } ] }\n";
    let (_dir, main) = setup(own_session, &dummies(&["b1"]));
    let first = load(&main).expect("first load");
    assert_ne!(first.devices[1].session, 0);
    let reuse = Reuse::new(&first, &main, |p| first.sources.stamp_of(p));
    // Only b.yaml can be kept.
    assert_eq!(reuse.files(), 1);
}
