//! The deployment files stay honest: every example and the reference configuration pass
//! `weft config check`; the reference shows every key with its real default; the weft.toml that
//! each terraform user-data/startup template writes (rendered here with test values) passes it
//! too; the systemd unit starts `weft agent` the way the binary accepts; the Kubernetes
//! ConfigMap carries a valid weft.toml and the same conflist as `config/kubernetes/`.
//! terraform fmt, checkov and kubernetes-validate run in `scripts/check-deploy.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `weft <args>` without any WEFT_* variable of the caller's environment leaking in.
fn weft(args: &[&str]) -> Output {
    let mut command = Command::new(WEFT);
    command.args(args).current_dir(root());
    for (key, _) in std::env::vars() {
        if key.starts_with("WEFT_") {
            command.env_remove(key);
        }
    }
    command.output().expect("run weft")
}

/// `weft config check --config <file>`: the effective values (key → value) or a panic with the
/// binary's message.
fn config_check(file: &Path) -> BTreeMap<String, String> {
    let out = weft(&["config", "check", "--config", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft config check --config {} failed ({}):\n{stderr}", file.display(), out.status);
    stdout
        .lines()
        .filter_map(|line| {
            let (assignment, _source) = line.rsplit_once("  # ")?;
            let (key, value) = assignment.split_once(" = ")?;
            Some((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Writes `text` to a temporary file and checks it.
fn config_check_text(text: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weft.toml");
    std::fs::write(&file, text).unwrap();
    config_check(&file)
}

#[test]
fn every_example_passes_config_check() {
    let expected = [
        "aws-vpc-multi-az.toml",
        "aws-vpc-route-tables.toml",
        "etcd-tls.toml",
        "gce.toml",
        "host-gw.toml",
        "kubernetes.toml",
        "lab.toml",
        "vxlan-direct-routing.toml",
        "vxlan.toml",
    ];
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            found.insert(path.file_name().unwrap().to_string_lossy().to_string());
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# ") && text.lines().take_while(|l| l.starts_with('#')).count() >= 3,
                "{}: starts with a comment block saying when to use it",
                path.display()
            );
            config_check(&path);
        }
    }
    for name in expected {
        assert!(found.contains(name), "examples/{name} is missing");
    }
}

#[test]
fn examples_choose_what_their_names_say() {
    let type_of = |name: &str| config_check(&root().join("examples").join(name))["network.backend.type"].clone();
    assert_eq!(type_of("aws-vpc-multi-az.toml"), "\"aws-vpc\"");
    assert_eq!(type_of("aws-vpc-route-tables.toml"), "\"aws-vpc\"");
    assert_eq!(type_of("gce.toml"), "\"gce\"");
    assert_eq!(type_of("host-gw.toml"), "\"host-gw\"");
    let multi_az = config_check(&root().join("examples/aws-vpc-multi-az.toml"));
    assert_ne!(multi_az["network.backend.route_table_tag"], "\"\"");
    let tables = config_check(&root().join("examples/aws-vpc-route-tables.toml"));
    assert!(tables["network.backend.route_table_ids"].contains("rtb-"));
    let direct = config_check(&root().join("examples/vxlan-direct-routing.toml"));
    assert_eq!(direct["network.backend.direct_routing"], "true");
    let kube = config_check(&root().join("examples/kubernetes.toml"));
    assert_eq!(kube["store.kind"], "\"kube\"");
    let lab = config_check(&root().join("examples/lab.toml"));
    assert_eq!(lab["store.kind"], "\"local\"");
    let tls = config_check(&root().join("examples/etcd-tls.toml"));
    assert_ne!(tls["store.ca_file"], "\"\"");
}

/// config/weft.toml passes, and every value it sets is the default (it documents the defaults).
#[test]
fn reference_config_shows_every_default() {
    let reference = config_check(&root().join("config/weft.toml"));
    let defaults = config_check_text("");
    assert_eq!(reference, defaults, "config/weft.toml must show the defaults");
}

/// Every key of every section and backend type is in config/weft.toml — set, or commented out
/// (`# key = default`) for the backend types that are not active — with its default.
#[test]
fn reference_config_documents_every_backend_key_with_its_default() {
    let text = read("config/weft.toml");
    for key in config_check_text("").keys() {
        let name = key.rsplit('.').next().unwrap();
        assert!(text.lines().any(|l| l.trim_start().starts_with(&format!("{name} ="))), "config/weft.toml lacks {key}");
    }
    for backend in ["vxlan", "host-gw", "alloc", "aws-vpc", "gce"] {
        let defaults = config_check_text(&format!("[network.backend]\ntype = \"{backend}\"\n"));
        // The section of this type: from its `# --- type = "<backend>"` line to the next `# ---`.
        let marker = format!("# --- type = \"{backend}\"");
        let start = text.find(&marker).unwrap_or_else(|| panic!("config/weft.toml has no section for {backend}"));
        let rest = &text[start + marker.len()..];
        let section = &rest[..rest.find("# ---").unwrap_or(rest.len())];
        let mut body = format!("[network.backend]\ntype = \"{backend}\"\n");
        for line in section.lines() {
            let line = line.trim();
            let uncommented = line.strip_prefix("# ").unwrap_or(line);
            let is_assignment = uncommented
                .split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if is_assignment {
                body.push_str(uncommented);
                body.push('\n');
            }
        }
        let shown = config_check_text(&body);
        assert_eq!(shown, defaults, "{backend}: config/weft.toml shows other values than the defaults:\n{body}");
        for key in defaults.keys().filter(|k| k.starts_with("network.backend.") && *k != "network.backend.type") {
            let name = key.rsplit('.').next().unwrap();
            assert!(
                body.lines().any(|l| l.starts_with(&format!("{name} ="))),
                "config/weft.toml does not show {key} for type = {backend:?}"
            );
        }
    }
}

/// The `${name}` interpolations of a terraform template. Only plain interpolations are allowed
/// (no `%{...}` directives, no `$${` escapes), so rendering here is what terraform does.
fn template_vars(template: &str, file: &str) -> BTreeSet<String> {
    assert!(!template.contains("%{"), "{file}: template directives are not allowed");
    assert!(!template.contains("$${"), "{file}: escaped interpolations are not allowed");
    let mut vars = BTreeSet::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').unwrap_or_else(|| panic!("{file}: unterminated ${{"));
        let name = &after[..end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{file}: only ${{variable}} interpolations are allowed, found ${{{name}}}"
        );
        vars.insert(name.to_string());
        rest = &after[end + 1..];
    }
    vars
}

fn render(template: &str, values: &BTreeMap<&str, String>, file: &str) -> String {
    let vars = template_vars(template, file);
    let mut out = template.to_string();
    for var in &vars {
        let value = values.get(var.as_str()).unwrap_or_else(|| panic!("{file}: no test value for ${{{var}}}"));
        out = out.replace(&format!("${{{var}}}"), value);
    }
    out
}

/// The keys a `templatefile("${path.module}/templates/<template>", { ... })` call passes.
fn templatefile_keys(tf: &str, template: &str, file: &str) -> BTreeSet<String> {
    let call = format!("templates/{template}\", {{");
    let start = tf.find(&call).unwrap_or_else(|| panic!("{file}: no templatefile call for {template}"));
    let body = &tf[start + call.len()..];
    let body = &body[..body.find("})").expect("end of the templatefile call")];
    body.lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty())
        .collect()
}

/// Text between `<<'MARK'` and the line `MARK`.
fn heredoc<'a>(script: &'a str, mark: &str, file: &str) -> &'a str {
    let open = format!("<<'{mark}'\n");
    let start = script.find(&open).unwrap_or_else(|| panic!("{file}: no <<'{mark}' heredoc")) + open.len();
    let end =
        script[start..].find(&format!("\n{mark}\n")).unwrap_or_else(|| panic!("{file}: heredoc {mark} not closed"));
    &script[start..start + end + 1]
}

fn bash_syntax_ok(script: &str, file: &str) {
    let Ok(bash) = which("bash") else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.sh");
    std::fs::write(&path, script).unwrap();
    let out = Command::new(bash).arg("-n").arg(&path).output().unwrap();
    assert!(out.status.success(), "{file}: bash -n: {}", String::from_utf8_lossy(&out.stderr));
}

fn which(program: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file()).ok_or(())
}

fn test_values() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("cluster_name", "weft-test".to_string()),
        ("weft_release_url", "https://example.com/weft-0.1.0-linux-amd64".to_string()),
        ("weft_release_sha256", "0".repeat(64)),
        // jsonencode() of the endpoint list, as instances.tf passes it.
        (
            "etcd_endpoints",
            r#"["http://10.0.0.10:2379","http://10.0.16.10:2379","http://10.0.32.10:2379"]"#.to_string(),
        ),
        ("pod_cidr", "10.244.0.0/16".to_string()),
        ("pod_subnet_len", "24".to_string()),
        ("route_table_tag", "weft.io/cluster=weft-test".to_string()),
        ("region", "us-east-1".to_string()),
        ("project", "weft-test-project".to_string()),
        ("network", "weft-test".to_string()),
        ("systemd_unit", read("config/systemd/weft.service")),
        ("etcd_name", "weft-test-etcd-0".to_string()),
        ("etcd_ip", "10.0.0.10".to_string()),
        ("etcd_initial_cluster", "weft-test-etcd-0=http://10.0.0.10:2380".to_string()),
    ])
}

/// Renders a node template, checks it against the terraform call, and returns the weft.toml's
/// effective values.
fn check_node_template(module: &str, template: &str) -> BTreeMap<String, String> {
    let file = format!("{module}/templates/{template}");
    let text = read(&file);
    let instances = read(format!("{module}/instances.tf"));
    let passed = templatefile_keys(&instances, template, &file);
    let used = template_vars(&text, &file);
    assert_eq!(used, passed, "{file}: the variables it uses and those instances.tf passes differ");
    let rendered = render(&text, &test_values(), &file);
    bash_syntax_ok(&rendered, &file);
    let unit = heredoc(&rendered, "WEFT_UNIT", &file);
    assert_eq!(unit.trim(), read("config/systemd/weft.service").trim(), "{file}: installs the unit as is");
    assert!(rendered.contains("systemctl enable"), "{file}: starts the unit");
    assert!(rendered.contains("install -m 0755 /tmp/weft /usr/local/bin/weft"), "{file}: installs weft");
    let toml = heredoc(&rendered, "WEFT_TOML", &file);
    let values = config_check_text(toml);
    assert_eq!(values["store.kind"], "\"etcd\"", "{file}");
    assert!(values["store.endpoints"].contains("http://10.0.16.10:2379"), "{file}");
    assert_eq!(values["network.cidr"], "\"10.244.0.0/16\"", "{file}");
    assert_eq!(values["network.subnet_len"], "24", "{file}");
    values
}

fn check_etcd_template(module: &str, template: &str) {
    let file = format!("{module}/templates/{template}");
    let text = read(&file);
    let instances = read(format!("{module}/instances.tf"));
    assert_eq!(
        template_vars(&text, &file),
        templatefile_keys(&instances, template, &file),
        "{file}: the variables it uses and those instances.tf passes differ"
    );
    let rendered = render(&text, &test_values(), &file);
    bash_syntax_ok(&rendered, &file);
    let env = heredoc(&rendered, "ETCD_ENV", &file);
    assert!(env.contains("ETCD_INITIAL_CLUSTER=\"weft-test-etcd-0=http://10.0.0.10:2380\""), "{file}");
}

#[test]
fn aws_user_data_renders_a_valid_aws_vpc_config() {
    let module = "terraform/aws/modules/weft-cluster";
    let values = check_node_template(module, "node-user-data.sh.tpl");
    assert_eq!(values["network.backend.type"], "\"aws-vpc\"");
    assert_eq!(values["network.backend.route_table_tag"], "\"weft.io/cluster=weft-test\"");
    assert_eq!(values["network.backend.route_table_ids"], "[]", "tag discovery, no explicit list");
    assert_eq!(values["network.backend.region"], "\"us-east-1\"");
    check_etcd_template(module, "etcd-user-data.sh.tpl");
    // The tag the route tables carry is the one weft looks for, and the IAM condition uses it.
    let main = read(format!("{module}/main.tf"));
    assert!(main.contains("route_table_tag = \"${var.route_table_tag_key}=${var.name}\""));
    assert!(main.contains("(var.route_table_tag_key) = var.name"));
    let iam = read(format!("{module}/iam.tf"));
    assert!(iam.contains("ec2:ResourceTag/${var.route_table_tag_key}"));
    let instances = read(format!("{module}/instances.tf"));
    assert!(instances.contains("source_dest_check = false"));
}

#[test]
fn gce_startup_script_renders_a_valid_gce_config() {
    let module = "terraform/gce/modules/weft-cluster";
    let values = check_node_template(module, "node-startup.sh.tpl");
    assert_eq!(values["network.backend.type"], "\"gce\"");
    assert_eq!(values["network.backend.project"], "\"weft-test-project\"");
    assert_eq!(values["network.backend.network"], "\"weft-test\"");
    check_etcd_template(module, "etcd-startup.sh.tpl");
    let instances = read(format!("{module}/instances.tf"));
    assert!(instances.contains("can_ip_forward = true"));
}

/// `[Section]` → key → values (a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        let (key, value) =
            line.split_once('=').unwrap_or_else(|| panic!("weft.service line {}: not key=value: {line}", n + 1));
        assert!(!current.is_empty(), "weft.service line {}: outside a section", n + 1);
        sections
            .entry(current.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    sections
}

/// The long flags `weft <command...> --help` lists.
fn flags_of(command: &[&str]) -> BTreeSet<String> {
    let mut args = command.to_vec();
    args.push("--help");
    let out = weft(&args);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_string())
        .collect()
}

/// Checks a command line of the unit: the binary, the subcommand, only flags it accepts, and
/// `--config /etc/weft/weft.toml`. Returns the arguments after the binary.
fn check_command_line(line: &str, subcommand: &[&str]) -> Vec<String> {
    let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert_eq!(words[0], "/usr/local/bin/weft", "{line}");
    assert_eq!(&words[1..=subcommand.len()], subcommand, "{line}");
    let known = flags_of(subcommand);
    let rest = &words[1 + subcommand.len()..];
    for word in rest.iter().filter(|w| w.starts_with("--")) {
        let flag = word.split('=').next().unwrap();
        assert!(known.contains(flag), "{line}: `weft {}` has no flag {flag}", subcommand.join(" "));
    }
    let config = rest.iter().position(|w| w == "--config").expect("--config");
    assert_eq!(rest[config + 1], "/etc/weft/weft.toml", "{line}");
    words[1..].to_vec()
}

#[test]
fn systemd_unit_runs_weft_agent_as_a_notify_service() {
    let text = read("config/systemd/weft.service");
    let unit = parse_unit(&text);
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service.get(key).unwrap_or_else(|| panic!("[Service] lacks {key}="));
        assert_eq!(values.len(), 1, "{key}= set more than once");
        &values[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    check_command_line(one("ExecStart"), &["agent"]);
    // The pre-start check works (on the reference config in place of /etc/weft/weft.toml).
    let mut pre = check_command_line(one("ExecStartPre"), &["config", "check"]);
    for word in pre.iter_mut().filter(|w| *w == "/etc/weft/weft.toml") {
        *word = root().join("config/weft.toml").display().to_string();
    }
    let out = weft(&pre.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let caps = |key: &str| one(key).split_whitespace().collect::<BTreeSet<_>>();
    let wanted = BTreeSet::from(["CAP_NET_ADMIN", "CAP_NET_RAW"]);
    assert_eq!(caps("CapabilityBoundingSet"), wanted);
    assert_eq!(caps("AmbientCapabilities"), wanted);
    let families = one("RestrictAddressFamilies").split_whitespace().collect::<BTreeSet<_>>();
    for family in ["AF_NETLINK", "AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.contains(family), "RestrictAddressFamilies lacks {family}");
    }
    // What would break the agent: a read-only /proc/sys (ip_forward), no /proc/sys at all, its
    // own network namespace, no writable /run/flannel.
    for (key, bad) in
        [("ProtectKernelTunables", "yes"), ("ProcSubset", "pid"), ("PrivateNetwork", "yes"), ("PrivateUsers", "yes")]
    {
        assert!(
            service.get(key).is_none_or(|v| v.iter().all(|v| v != bad && v != "true")),
            "{key}={bad} breaks the agent"
        );
    }
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("RuntimeDirectory"), "flannel", "subnet.env lives in /run/flannel");
    assert_eq!(one("RuntimeDirectoryPreserve"), "yes", "subnet.env survives restarts");
    assert_eq!(one("StateDirectory"), "weft");
    assert_eq!(unit["Install"]["WantedBy"], vec!["multi-user.target".to_string()]);

    // systemd's own verdict, where systemd-analyze exists: the unit with this build's binary.
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze not found: the unit was checked by parsing only");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.service");
    std::fs::write(&path, text.replace("/usr/local/bin/weft", WEFT)).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // systemd's syscall table may name calls this kernel lacks: not the unit's fault.
    let complaints: Vec<&str> =
        stderr.lines().filter(|l| l.contains("weft.service") && !l.contains("system call")).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{stderr}");
}

/// A `key: |` block scalar of the manifest, without its indentation.
fn block_scalar(yaml: &str, key: &str) -> String {
    let header = format!("{key}: |");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != header);
    let header_line = lines.next().unwrap_or_else(|| panic!("weft.yaml: no {header}"));
    let key_indent = header_line.len() - header_line.trim_start().len();
    let mut body = Vec::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            body.push(String::new());
            continue;
        }
        let this = line.len() - line.trim_start().len();
        if this <= key_indent {
            break;
        }
        let indent = *indent.get_or_insert(this);
        body.push(line[indent.min(this)..].to_string());
    }
    body.join("\n") + "\n"
}

#[test]
fn kubernetes_configmap_matches_the_files() {
    let manifest = read("config/kubernetes/weft.yaml");
    let values = config_check_text(&block_scalar(&manifest, "weft.toml"));
    assert_eq!(values["store.kind"], "\"kube\"");
    let listen = values["agent.listen"].trim_matches('"').to_string();
    let port = listen.rsplit(':').next().unwrap();
    assert!(manifest.contains(&format!("port: {port}")), "probes use agent.listen's port {port}");
    assert!(manifest.contains("path: /healthz") && manifest.contains("path: /readyz"));
    assert!(manifest.contains("fieldPath: spec.nodeName"), "NODE_NAME from the downward API");

    let in_manifest: serde_json::Value =
        serde_json::from_str(&block_scalar(&manifest, "cni-conf.json")).expect("ConfigMap conflist is JSON");
    let file: serde_json::Value =
        serde_json::from_str(&read("config/kubernetes/10-weft.conflist")).expect("10-weft.conflist is JSON");
    assert_eq!(in_manifest, file, "the ConfigMap's cni-conf.json and 10-weft.conflist differ");
    assert_eq!(file["plugins"][0]["type"], "weft-cni");
    assert_eq!(
        file["plugins"][0]["subnetFile"].as_str().map(|s| format!("\"{s}\"")),
        Some(values["agent.subnet_file"].clone()),
        "weft-cni reads the subnet.env the agent writes"
    );
}
