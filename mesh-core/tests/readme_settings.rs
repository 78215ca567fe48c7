//! The README's tables of `MESH_` variables must match the settings registry.

use mesh_core::config::settings::{Status, SETTINGS};

fn expected_table(status: Status) -> String {
    let mut out = String::new();
    for def in SETTINGS.iter().filter(|d| d.status == status) {
        match status {
            Status::Supported => out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                def.variable(),
                def.default,
                def.doc
            )),
            Status::Planned => out.push_str(&format!("| `{}` | {} |\n", def.variable(), def.doc)),
        }
    }
    out
}

fn readme_table(marker: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md at the workspace root");
    let begin = format!("<!-- {marker}:begin -->");
    let end = format!("<!-- {marker}:end -->");
    let start = readme
        .find(&begin)
        .unwrap_or_else(|| panic!("README lacks {begin}"))
        + begin.len();
    let stop = readme
        .find(&end)
        .unwrap_or_else(|| panic!("README lacks {end}"));
    readme[start..stop]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn readme_settings_table_matches_the_registry() {
    let expected = expected_table(Status::Supported);
    assert!(
        readme_table("settings") == expected,
        "README's settings table is out of date; it should read:\n{expected}"
    );
}

#[test]
fn readme_planned_settings_table_matches_the_registry() {
    let expected = expected_table(Status::Planned);
    assert!(
        readme_table("planned") == expected,
        "README's planned-settings table is out of date; it should read:\n{expected}"
    );
}
