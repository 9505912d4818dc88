//! `fieldgate profiles` (list) and `fieldgate profiles show NAME` (print).

use std::path::Path;

use crate::config::profile;

/// `fieldgate profiles`: every profile with where it comes from and its title.
pub fn list() -> i32 {
    let all = profile::list();
    let width = all.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    for (name, origin, title) in &all {
        println!("{name:width$}  {origin:10}  {title}");
    }
    println!();
    println!(
        "Use one with `profile: NAME` on a device; local profiles live in {}/NAME.yaml \
         and override built-in ones of the same name. `fieldgate profiles show NAME` prints one.",
        profile::local_dir().display()
    );
    0
}

/// `fieldgate profiles show NAME`: the profile's YAML as it will be used.
pub fn show(name: &str) -> i32 {
    match profile::find(name, Path::new(".")) {
        Ok(found) => {
            println!("# {} ({})", found.name, found.label);
            print!("{}", found.text);
            if !found.text.ends_with('\n') {
                println!();
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
