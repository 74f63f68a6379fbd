//! The operators' docs (`docs/`) against the code they describe: the metrics `/metrics` serves,
//! the cloud permissions against the API calls the providers make, the pictures as well-formed
//! SVG, and every relative link in the docs pointing at a file that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use regex::Regex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let full = root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

fn set<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    items.into_iter().collect()
}

/// `(name as served, type)` of every metric in `/metrics`' text. A counter's descriptor names
/// the family; its samples (what a query uses) carry `_total`.
fn served_metrics(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("# TYPE <name> <type>");
            let name = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            (name, kind.to_string())
        })
        .collect()
}

/// The rows of operations.md's metrics table: `` | `weft_…` | type | labels | meaning | ``.
fn documented_metrics(doc: &str) -> BTreeSet<(String, String)> {
    let row = Regex::new(r"^\| `(weft_[a-z0-9_]+)` \| (counter|gauge|histogram|info) \|").unwrap();
    doc.lines().filter_map(|line| row.captures(line)).map(|c| (c[1].to_string(), c[2].to_string())).collect()
}

#[test]
fn operations_lists_exactly_the_metrics_served() {
    let served = served_metrics(&weft::health::Metrics::default().encode());
    assert!(served.len() > 10, "the metrics text was not understood: {served:?}");
    let documented = documented_metrics(&read("docs/operations.md"));
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/operations.md's metrics table differs from /metrics:\n  served but not documented: \
         {missing:?}\n  documented but not served: {extra:?}"
    );
}

#[test]
fn metric_rows_are_recognised() {
    // Guards the parser above: a row in the format is read, a row in another is not.
    let doc = "| `weft_ready` | gauge | — | 1 when ready |\n| weft_other | gauge | — | x |\n";
    assert_eq!(documented_metrics(doc), set([("weft_ready".to_string(), "gauge".to_string())]));
}

/// `describe_route_tables` → `DescribeRouteTables`.
fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The EC2 operations providers/aws makes: every `client.<operation>()` of the SDK client in
/// sdk.rs, which must also be the operation names the call metrics count (`const OP`).
fn ec2_operations() -> BTreeSet<String> {
    let sdk = read("providers/aws/src/sdk.rs");
    let compact: String = sdk.chars().filter(|c| !c.is_whitespace()).collect();
    let calls = Regex::new(r"\.client\.([a-z_]+)\(").unwrap();
    let called = set(calls.captures_iter(&compact).map(|c| camel(&c[1])));
    let counted = Regex::new(r#"const OP: &str = "([A-Za-z]+)";"#).unwrap();
    let counted = set(counted.captures_iter(&sdk).map(|c| c[1].to_string()));
    assert!(!called.is_empty(), "no SDK calls found in providers/aws/src/sdk.rs");
    assert_eq!(called, counted, "providers/aws/src/sdk.rs: SDK calls vs the operation names counted");
    called
}

#[test]
fn aws_policy_allows_exactly_the_ec2_calls_weft_makes() {
    let text = read("docs/aws-iam-policy.json");
    let policy: serde_json::Value = serde_json::from_str(&text).expect("docs/aws-iam-policy.json is JSON");
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().expect("Statement is a list") {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        for action in statement["Action"].as_array().expect("Action is a list") {
            let action = action.as_str().expect("an action is a string");
            let op = action.strip_prefix("ec2:").unwrap_or_else(|| panic!("{action}: not an EC2 action"));
            assert!(actions.insert(op.to_string()), "{action} listed twice");
        }
    }
    assert_eq!(actions, ec2_operations(), "docs/aws-iam-policy.json vs providers/aws/src/sdk.rs");
    let terraform = quoted_list_items(&read("terraform/aws/modules/weft-cluster/iam.tf"), "actions");
    // The node role's EC2 actions (its trust policy's `sts:AssumeRole` is not one).
    let terraform = set(terraform.iter().filter_map(|a| a.strip_prefix("ec2:")).map(String::from));
    assert_eq!(terraform, actions, "terraform/aws's node role vs docs/aws-iam-policy.json");
    assert!(read("docs/cloud.md").contains(text.trim()), "docs/cloud.md must show docs/aws-iam-policy.json as it is");
}

/// `weft doctor` dry-runs every EC2 action weft makes, and no other.
#[test]
fn doctor_dry_runs_exactly_the_ec2_calls_weft_makes() {
    let dry_run = set(weft_aws::ACTIONS.iter().map(|a| a.to_string()));
    assert_eq!(dry_run, ec2_operations(), "weft_aws::ACTIONS vs providers/aws/src/sdk.rs");
}

/// The strings of every `<key> = [ "…", … ]` list in a terraform file.
fn quoted_list_items(tf: &str, key: &str) -> Vec<String> {
    let list = Regex::new(&format!(r"\b{key}\s*=\s*\[([^\]]*)\]")).unwrap();
    let quoted = Regex::new(r#""([^"]*)""#).unwrap();
    list.captures_iter(tf)
        .flat_map(|l| quoted.captures_iter(&l[1]).map(|c| c[1].to_string()).collect::<Vec<_>>())
        .collect()
}

/// The Compute API methods providers/gce makes, as the call metrics name them (`routes.insert`):
/// every `self.<service>.<method>()` in sdk.rs, which must also be what metered.rs counts.
fn compute_methods() -> BTreeSet<String> {
    let sdk = read("providers/gce/src/sdk.rs");
    // Without whitespace: a call may be split over lines (`self\n.routes\n.list()`).
    let compact: String = sdk.chars().filter(|c| !c.is_whitespace()).collect();
    let calls = Regex::new(r"self\.(routes|operations|instances|networks|projects)\.([a-z_]+)\(\)").unwrap();
    let called = set(calls.captures_iter(&compact).map(|c| {
        let service = if &c[1] == "operations" { "globalOperations" } else { &c[1] };
        format!("{service}.{}", &c[2])
    }));
    // Any other SDK client would be a field of `SdkCompute`, set with `build_client!`.
    let clients = Regex::new(r"build_client!\((\w+),").unwrap();
    let services = set(clients.captures_iter(&sdk).map(|c| c[1].to_string()));
    assert_eq!(
        services,
        set(["GlobalOperations", "Instances", "Networks", "Projects", "Routes"].map(String::from)),
        "a new Compute service in providers/gce/src/sdk.rs: teach this test its calls"
    );
    let counted = Regex::new(r#"self\.note(?:_operation)?\("([A-Za-z]+\.[a-z]+)""#).unwrap();
    let counted = set(counted.captures_iter(&read("providers/gce/src/metered.rs")).map(|c| c[1].to_string()));
    assert!(!called.is_empty(), "no SDK calls found in providers/gce/src/sdk.rs");
    assert_eq!(called, counted, "providers/gce/src/sdk.rs calls vs providers/gce/src/metered.rs names");
    called
}

/// The IAM permissions a Compute API method needs.
fn permissions(method: &str) -> &'static [&'static str] {
    match method {
        // Creating or deleting a route changes the network's routing too; an insert also uses
        // the next-hop instance.
        "routes.insert" => &["compute.routes.create", "compute.networks.updatePolicy", "compute.instances.use"],
        "routes.delete" => &["compute.routes.delete", "compute.networks.updatePolicy"],
        "routes.get" => &["compute.routes.get"],
        "routes.list" => &["compute.routes.list"],
        "globalOperations.get" => &["compute.globalOperations.get"],
        "instances.get" => &["compute.instances.get"],
        "networks.get" => &["compute.networks.get"],
        "projects.get" => &["compute.projects.get"],
        other => panic!("{other}: a new Compute API call; add its permissions here and in docs/gce-role.yaml"),
    }
}

#[test]
fn gce_role_grants_exactly_the_permissions_of_the_calls_weft_makes() {
    let text = read("docs/gce-role.yaml");
    let role: serde_yaml::Value = serde_yaml::from_str(&text).expect("docs/gce-role.yaml is YAML");
    let granted = role["includedPermissions"].as_sequence().expect("includedPermissions is a list");
    let granted = set(granted.iter().map(|p| p.as_str().expect("a permission is a string").to_string()));
    let needed = set(compute_methods().iter().flat_map(|m| permissions(m)).map(|p| p.to_string()));
    assert_eq!(granted, needed, "docs/gce-role.yaml vs the calls in providers/gce/src/sdk.rs");
    let terraform = set(quoted_list_items(&read("terraform/gce/modules/weft-cluster/iam.tf"), "permissions"));
    assert_eq!(terraform, granted, "terraform/gce's custom role vs docs/gce-role.yaml");
    assert!(read("docs/cloud.md").contains(text.trim()), "docs/cloud.md must show docs/gce-role.yaml as it is");
}

/// Well-formed XML with an `<svg>` root: every element closed in order, one root, known
/// entities only.
fn check_svg(text: &str) -> Result<(), String> {
    use xmlparser::{ElementEnd, Token, Tokenizer};
    let mut open: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut text_nodes = Vec::new();
    for token in Tokenizer::from(text) {
        match token.map_err(|e| e.to_string())? {
            Token::ElementStart { prefix, local, .. } => {
                if open.is_empty() {
                    roots += 1;
                    if local.as_str() != "svg" {
                        return Err(format!("root element is <{local}>, not <svg>"));
                    }
                }
                open.push(format!("{prefix}:{local}"));
            }
            Token::ElementEnd { end: ElementEnd::Empty, .. } => {
                open.pop();
            }
            Token::ElementEnd { end: ElementEnd::Close(prefix, local), .. } => {
                let closing = format!("{prefix}:{local}");
                match open.pop() {
                    Some(name) if name == closing => {}
                    other => return Err(format!("</{local}> closes {other:?}")),
                }
            }
            Token::Text { text } => text_nodes.push(text.as_str()),
            Token::Attribute { value, .. } => text_nodes.push(value.as_str()),
            _ => {}
        }
    }
    if !open.is_empty() {
        return Err(format!("unclosed elements: {open:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    let entity = Regex::new(r"&([^;\s]*);?").unwrap();
    for node in text_nodes {
        for found in entity.captures_iter(node) {
            if !["lt", "gt", "amp", "quot", "apos"].contains(&&found[1]) || !found[0].ends_with(';') {
                return Err(format!("bad entity {:?}", &found[0]));
            }
        }
    }
    Ok(())
}

fn pictures() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join("docs/pictures"))
        .expect("docs/pictures")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "svg"))
        .collect();
    found.sort();
    found
}

#[test]
fn pictures_are_well_formed_svg() {
    let pictures = pictures();
    for name in ["vxlan.svg", "host-gw.svg", "aws-vpc.svg", "gce.svg", "hybrid.svg"] {
        assert!(pictures.iter().any(|p| p.ends_with(name)), "docs/pictures/{name} missing");
    }
    for picture in pictures {
        let text = std::fs::read_to_string(&picture).expect("reading a picture");
        check_svg(&text).unwrap_or_else(|e| panic!("{}: {e}", picture.display()));
        assert!(text.contains("viewBox=\""), "{}: no viewBox, it would not scale", picture.display());
    }
}

#[test]
fn the_svg_check_finds_broken_pictures() {
    assert!(check_svg(r#"<svg xmlns="http://www.w3.org/2000/svg"><g><text>ok &lt;mac&gt;</text></g></svg>"#).is_ok());
    for broken in [
        r#"<svg><g></svg>"#,
        r#"<svg><text>a</g></text></svg>"#,
        r#"<svg><text>fdb <mac> dst</text></svg>"#,
        r#"<svg><text>a & b</text></svg>"#,
        r#"<html></html>"#,
        r#"<svg></svg><svg></svg>"#,
    ] {
        assert!(check_svg(broken).is_err(), "{broken} passed");
    }
}

/// Relative links (`](path)`) in a markdown file, without their `#anchor`.
fn relative_links(markdown: &str) -> Vec<String> {
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    link.captures_iter(markdown)
        .map(|c| c[1].split('#').next().unwrap_or_default().to_string())
        .filter(|target| !target.is_empty() && !target.contains("://"))
        .collect()
}

#[test]
fn docs_links_resolve_and_every_page_and_picture_is_linked() {
    let mut linked = BTreeSet::new();
    let mut from_readme = BTreeSet::new();
    let pages = ["README.md", "docs/architecture.md", "docs/operations.md", "docs/cloud.md", "docs/migration.md"];
    for page in pages {
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for target in relative_links(&read(page)) {
            let path = root().join(dir).join(&target);
            assert!(path.exists(), "{page}: link to {target}, which does not exist");
            let path = path.canonicalize().expect("an existing path");
            if page == "README.md" {
                from_readme.insert(path.clone());
            }
            linked.insert(path);
        }
    }
    for page in &pages[1..] {
        assert!(from_readme.contains(&root().join(page).canonicalize().unwrap()), "the README does not link {page}");
    }
    for picture in pictures() {
        assert!(linked.contains(&picture.canonicalize().unwrap()), "no page shows {}", picture.display());
    }
}
