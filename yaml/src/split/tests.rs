//! Parsing in parts against the serial parse: the same tree, or the same
//! error, for every text and number of parts; and the parts really used
//! for the texts they are made for.

use super::{parse_in_parts, plan};
use crate::parse::{build, parse_with};

/// The serial parse's result, comparable.
fn serial(text: &str) -> Result<crate::Node, (usize, usize, String)> {
    build(text, 0)
        .map(|b| b.root)
        .map_err(|e| (e.line, e.column, e.message))
}

/// `parse_with(text, parts)` gives what the serial parse gives; true when
/// the text was read in parts.
fn agrees(text: &str, parts: usize) -> bool {
    let ours = parse_with(text, parts).map_err(|e| (e.line, e.column, e.message));
    assert_eq!(ours, serial(text), "{parts} parts of:\n{text}");
    plan(text, parts).is_some_and(|p| parse_in_parts(text, &p).is_some())
}

const HEAD: &str =
    "# a config\ngateway:\n  namespace: plant\nmqtt:\n  message: { qos: 1 }\ndevices:\n";

/// `n` devices in the bench's style at indentation `indent`.
fn devices(n: usize, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut y = String::new();
    for d in 0..n {
        y.push_str(&format!(
            "{pad}- name: dev-{d:03}\n{pad}  driver: dummy\n{pad}  properties:\n{pad}    - {{ name: p1, type: uint32, simulate: {{ counter: {{ start: {d}, step: 1 }} }} }}\n{pad}    - name: p2\n{pad}      type: float64\n"
        ));
    }
    y
}

#[test]
fn a_long_devices_list_is_read_in_parts_as_one() {
    for indent in [0, 2, 4] {
        let text = format!("{HEAD}{}include: [a.yaml]\n", devices(60, indent));
        for parts in 2..=6 {
            assert!(agrees(&text, parts), "indent {indent}, {parts} parts");
            let p = plan(&text, parts).unwrap();
            assert_eq!(p.runs.len(), parts - 1);
            assert_eq!(p.devices_line, 6);
            for (range, breaks) in &p.runs {
                assert!(
                    text[range.clone()].starts_with(&format!("{}- name: dev-", " ".repeat(indent)))
                );
                assert_eq!(*breaks as usize, text[..range.start].matches('\n').count());
            }
            let (tail, _) = p.tail.as_ref().unwrap();
            assert_eq!(&text[tail.clone()], "include: [a.yaml]\n");
        }
    }
    // No tail, CRLF line ends, comments and blank lines between items.
    let text = format!("{HEAD}{}", devices(40, 2)).replace("\n", "\r\n");
    assert!(agrees(&text, 3));
    let text = format!("{HEAD}{}", devices(40, 2)).replace(
        "  - name: dev-01",
        "\n# a comment\n    # another\n\n  - name: dev-01",
    );
    assert!(agrees(&text, 4));
}

#[test]
fn positions_in_later_parts_are_the_files() {
    let text = format!("{HEAD}{}", devices(50, 2));
    let p = plan(&text, 2).unwrap();
    let tree = parse_in_parts(&text, &p).unwrap();
    let last = tree
        .get("devices")
        .unwrap()
        .items()
        .unwrap()
        .last()
        .unwrap();
    assert_eq!(last.pos(), (text.lines().count() - 5, 5));
    assert_eq!(
        last.get("driver").unwrap().pos(),
        (text.lines().count() - 4, 13)
    );
}

#[test]
fn texts_easy_to_misread_in_parts_read_as_one() {
    let list = devices(30, 2);
    let cases = [
        // An alias to an anchor of an earlier part, a root merge key, a
        // second `devices` key, a duplicate root key (last wins).
        format!(
            "defaults: &d {{ driver: dummy }}\n{HEAD}{}",
            list.replace("driver: dummy", "<<: *d")
        ),
        format!("{HEAD}{list}<<: {{ gateway: {{ namespace: other }} }}\n"),
        format!("<<: {{ extra: 1 }}\n{HEAD}{list}"),
        format!("{HEAD}{list}devices: []\n"),
        format!("devices: []\n{HEAD}{list}"),
        format!("{HEAD}{list}gateway: {{ namespace: last }}\n"),
        // A root block scalar after the list whose text looks like items.
        format!("{HEAD}{list}notes: |\n  - name: not-a-device\n  - name: nor-this\n"),
        format!("{HEAD}{list}notes: |+\n  - name: x\n\n\n"),
        // Multi-line strings and flow collections over item-like lines.
        list.replace(
            "  - name: dev-010\n",
            "  - name: \"dev-010\n  - name: still the string\"\n",
        ),
        list.replace(
            "  - name: dev-010\n",
            "  - name: dev-010\n    tags: [a,\n  - b]\n",
        ),
        list.replace(
            "  - name: dev-010\n",
            "  - name: 'dev-010\n\n  - name: x'\n",
        ),
        list.replace(
            "  - name: dev-010\n",
            "  - name: \"dev-010\n       - name: x\"\n    flow: [\n       b ]\n",
        ),
        // Block scalars ending at a part's end, with kept line breaks.
        list.replace(
            "        type: float64\n",
            "        type: float64\n        note: |+\n          kept\n\n",
        ),
        list.replace(
            "        type: float64\n",
            "        type: float64\n        note: >-\n          folded\n\n          - text\n",
        ),
        // Item-like lines deeper in, nested lists, scalar items.
        list.replace(
            "  - name: dev-010\n",
            "  - - nested\n    - list\n  - plain item\n  - |\n    - a block\n  - name: dev-010\n",
        ),
        // Tabs, a lone CR, a NUL, markers and odd lines after the list.
        list.replace("  - name: dev-010\n", "  - name: dev-010\n\t\n"),
        list.replace("  - name: dev-010\n", "  - name: dev-010\r  - name: cr\n"),
        list.replace("  - name: dev-010\n", "  - name: dev-\u{0}010\n"),
        format!("{HEAD}{list}---\nsecond: document\n"),
        format!("{HEAD}{list}...\n"),
        format!("{HEAD}{list} odd: indent\n"),
        format!("{HEAD}{list}{{ flow: map }}\n"),
        format!("{HEAD}{list}&a key: 1\n"),
        format!("{HEAD}{list}? explicit\n: key\n"),
        format!("{HEAD}{list}\"quoted\": key\n'single': key\n"),
        // Syntax errors in a later part, and a list at column 1.
        format!(
            "{HEAD}{}",
            list.replace("dev-025\n", "dev-025\n    bad: [\n")
        ),
        format!(
            "{HEAD}{}",
            list.replace("dev-025\n", "dev-025\n  driver: wrong\n")
        ),
        format!(
            "{HEAD}{}",
            list.replace("dev-025\n", "dev-025\n   driver: wrong\n")
        ),
        format!(
            "{HEAD}{}",
            devices(30, 0).replace("- name: dev-020", "-name: dev-020")
        ),
        format!("{HEAD}{}extra: 1\n", devices(30, 0)),
        // Not a block list under `devices:`.
        format!("{HEAD}  [a, b]\n"),
        format!("devices: # list\n{list}"),
        format!("devices: &all\n{list}copy: *all\n"),
        format!("--- |\n{HEAD}{list}"),
    ];
    let mut in_parts = 0;
    for text in &cases {
        let text = if text.contains("devices:") {
            text.clone()
        } else {
            format!("{HEAD}{text}")
        };
        for parts in 2..=5 {
            in_parts += usize::from(agrees(&text, parts));
        }
    }
    // The ten that read the same in parts are read in parts: root block
    // scalars, a duplicate key and quoted keys after the list, block
    // scalars, a multi-line string and a flow list within items, nested
    // lists, a comment after `devices:`, a list at column 1.
    assert_eq!(in_parts, 10 * 4);
}

#[test]
fn random_device_lists_read_in_parts_as_one() {
    // xorshift: lists of devices built from item lines that are easy to
    // misread when cut, with tails of root keys.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let pieces = [
        "  - name: d{i}\n    driver: dummy\n",
        "  - { name: d{i}, driver: dummy }\n",
        "  - name: d{i}\n    note: |\n      - looks like an item\n      text\n",
        "  - name: d{i}\n    note: >+\n      folded\n\n",
        "  - name: d{i}\n    props:\n    - a\n    - b\n",
        "  - name: \"d{i}\n      continued\"\n",
        "  - name: d{i}\n    flow: [1,\n      2]\n",
        "  # a comment\n\n  - name: d{i}\n",
        "  - &a{i} name: d{i}\n    copy: *a{i}\n",
        "  - name: d{i}\n    plain: multi\n      line\n",
        "  -\n    name: d{i}\n",
        "  - d{i}\n",
    ];
    let tails = [
        "",
        "include: [x]\n",
        "gateway: { namespace: t }\n",
        "notes: |\n  - x\n",
    ];
    let (mut read, mut in_parts) = (0, 0);
    for _ in 0..200 {
        let mut text = String::from(HEAD);
        for i in 0..5 + next(40) {
            text.push_str(&pieces[next(pieces.len())].replace("{i}", &i.to_string()));
        }
        text.push_str(tails[next(tails.len())]);
        for parts in 2..=4 {
            read += 1;
            in_parts += usize::from(agrees(&text, parts));
        }
    }
    assert!(
        in_parts * 10 > read * 9,
        "{in_parts} of {read} read in parts"
    );
}
