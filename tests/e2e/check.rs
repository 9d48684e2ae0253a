//! `graygate check`, like `nginx -t`: exit 0 for a valid config, 1 for a bad one, and every error
//! names the file, the line and the field.
//!
//! These configs stay raw TOML text on purpose: the errors and the lines they name are the point.

use crate::support::check;

struct Checked {
    code: i32,
    out: String,
}

fn check_files(files: &[(&str, &str)]) -> (Checked, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let c = check(&dir.path().join(files[0].0));
    (
        Checked {
            code: c.code,
            out: format!("{}{}", c.stdout, c.stderr),
        },
        dir.path().display().to_string(),
    )
}

const UPSTREAMS: &str = "[[upstreams]]\nname = \"prod\"\nservers = [\"127.0.0.1:18080\"]\n\
    [[upstreams]]\nname = \"gray\"\nservers = [\"127.0.0.1:19090\", \"127.0.0.1:19091 weight=3\"]\n";

const POLICY: &str =
    "[[routes]]\nservice = \"web\"\n[[services]]\nname = \"web\"\nstable = \"v1\"\n\
    versions = { v1 = \"prod\", v2 = \"gray\" }\n";

/// Each bad config, with what its error must say: `file:line:` and the field, then the message.
#[test]
fn every_kind_of_bad_config_gets_its_own_clear_error() {
    let listen = "listen = [\"127.0.0.1:8080\"]\n";
    let cases: Vec<(String, &str)> = vec![
        (format!("{listen}oops = 1\n{UPSTREAMS}"), "graygate.toml:2:1: oops: unknown field `oops`"),
        (format!("{listen}{UPSTREAMS}weigth = 1\n"), "graygate.toml:8:1: weigth: unknown field `weigth`, expected one of `name`, `servers`, `health`, `passive`, `protocol`, `tls`, `ca`, `sni`, `client_cert`, `client_key`"),
        (format!("{listen}[timeouts]\nconect = \"1s\"\n"), "graygate.toml:3:1: conect: unknown field `conect`"),
        (format!("{listen}[[upstreams]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"\n"), "graygate.toml:5:1: servers: invalid array"),
        ("[[upstreams]]\nname = \"a\"\nservers = []\n".to_string(), "graygate.toml:1:1: listen: needs at least one address"),
        ("listen = [\"localhost\"]\n".to_string(), "graygate.toml:1:11: listen[0]: `localhost` is not an address"),
        (format!("{listen}[timeouts]\nconnect = \"2 parsecs\"\n"), "graygate.toml:3:1: timeouts.connect: `2 parsecs` is not a duration"),
        (format!("{listen}[store]\nkind = \"etcd\"\n"), "graygate.toml:3:1: store.kind: unknown store `etcd`"),
        (format!("{listen}[client_ip]\ntrusted_proxies = [\"10.0.0/8\"]\n"), "graygate.toml:3:20: client_ip.trusted_proxies[0]: `10.0.0/8`"),
        (format!("{listen}[client_ip]\nmode = \"leftmost\"\n"), "graygate.toml:3:1: client_ip.mode: unknown mode `leftmost`"),
        (format!("{listen}[[upstreams]]\nname = \"a\"\nservers = [\"127.0.0.1\"]\n"), "graygate.toml:4:12: upstreams[0].servers[0]: `127.0.0.1` has no port"),
        (format!("{listen}[[upstreams]]\nname = \"a\"\nservers = [\"127.0.0.1:1 weight=0\"]\n"), "upstreams[0].servers[0]: weight `0` is not a whole number"),
        (format!("{listen}{UPSTREAMS}[[upstreams]]\nname = \"prod\"\nservers = [\"127.0.0.1:2\"]\n"), "graygate.toml:9:1: upstreams[2].name: upstream `prod` is defined twice"),
        (format!("{listen}max_header_bytes = 10\n"), "graygate.toml:2:1: max_header_bytes: 10 is too small"),
        (format!("{listen}max_header_bytes = 67108864\n"), "graygate.toml:2:1: max_header_bytes: 67108864 is too large (at most 1048576, 1 MiB)"),
        (format!("{listen}[timeouts]\nheader = \"500000000000y\"\n"), "graygate.toml:3:1: timeouts.header: `500000000000y` is longer than 365 days, the longest duration accepted"),
        (format!("{listen}{UPSTREAMS}passive = {{ max_ejection = \"400d\" }}\n"), "graygate.toml:8:13: upstreams[1].passive.max_ejection: `400d` is longer than 365 days"),
        ("listen = [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]\n".to_string(), "graygate.toml:1:29: listen[1]: 127.0.0.1:8080 is also `listen[0]`: every listener needs an address of its own"),
        (
            format!("{listen}[metrics]\nlisten = \"127.0.0.1:9091\"\n[admin]\nlisten = \"127.0.0.1:9091\"\n"),
            "graygate.toml:5:1: admin.listen: 127.0.0.1:9091 is also `metrics.listen`: every listener needs an address of its own",
        ),
        (format!("{listen}{UPSTREAMS}health = {{ interval = \"1s\", timeout = \"3s\" }}\n"), "graygate.toml:8:29: upstreams[1].health.timeout: 3s is longer than the interval (1s)"),
        (
            format!("{listen}{UPSTREAMS}[policy]\n[[policy.routes]]\nservice = \"web\"\n[[policy.services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"nowhere\" }}\n"),
            "graygate.toml:14:14: policy.services[0].versions.v1: unknown upstream `nowhere`",
        ),
        (
            format!("{listen}{UPSTREAMS}[policy]\n[[policy.routes]]\nservice = \"web\"\n[[policy.services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"prod\" }}\n[[policy.services.rules]]\nname = \"r\"\nversion = \"v1\"\nwhen = {{ header = \"a\", regex = \"([\" }}\n"),
            "graygate.toml:18:24: policy.services[0].rules[0].when.regex: invalid regex",
        ),
        (
            format!("{listen}{UPSTREAMS}[policy]\n[[policy.routes]]\nservice = \"web\"\n[[policy.services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"prod\" }}\n[[policy.services.rules]]\nname = \"r\"\nversion = \"v1\"\nwhen = {{ header = \"a\", equls = \"b\" }}\n"),
            "graygate.toml:18:",
        ),
        (format!("{listen}policy_file = \"missing.toml\"\n{UPSTREAMS}"), "missing.toml: cannot read"),
        (format!("{listen}policy_file = \"p.toml\"\n{UPSTREAMS}[policy]\n"), "graygate.toml:2:1: policy_file: give the policy inline"),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        let (c, dir) = check_files(&[("graygate.toml", &text)]);
        let out = c.out.replace(&format!("{dir}/"), "");
        assert_eq!(c.code, 1, "exit code for:\n{text}\noutput: {out}");
        if !out.contains(want) {
            failures.push(format!("config:\n{text}\nwant: {want}\ngot:  {out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn an_unknown_field_deep_in_a_rule_is_named() {
    let text = format!(
        "listen = [\"127.0.0.1:8080\"]\n{UPSTREAMS}[policy]\n[[policy.routes]]\nservice = \"web\"\n[[policy.services]]\nname = \"web\"\nstable = \"v1\"\nversions = {{ v1 = \"prod\" }}\n[[policy.services.rules]]\nname = \"r\"\nversion = \"v1\"\nwhen = {{ header = \"a\", equls = \"b\" }}\n"
    );
    let (c, _) = check_files(&[("graygate.toml", &text)]);
    assert_eq!(c.code, 1);
    assert!(c.out.contains("unknown field `equls`"), "{}", c.out);
}

#[test]
fn errors_in_a_policy_file_name_that_file_and_line() {
    let config =
        format!("listen = [\"127.0.0.1:8080\"]\npolicy_file = \"policy.toml\"\n{UPSTREAMS}");
    let policy = format!("{POLICY}[[services.rules]]\nname = \"office\"\nversion = \"v2\"\nwhen = {{ cidr = [\"10.0.0.0/8\", \"300.1.1.1\"] }}\n");
    let (c, dir) = check_files(&[("graygate.toml", &config), ("policy.toml", &policy)]);
    let out = c.out.replace(&format!("{dir}/"), "");
    assert_eq!(c.code, 1, "{out}");
    assert!(
        out.contains("policy.toml:10:32: services[0].rules[0].when.cidr[1]: `300.1.1.1` is neither an IP address nor a network"),
        "{out}"
    );

    let bad_version = format!("{POLICY}[services.split]\nweights = {{ v3 = 10 }}\n");
    let (c, dir) = check_files(&[("graygate.toml", &config), ("policy.toml", &bad_version)]);
    let out = c.out.replace(&format!("{dir}/"), "");
    assert!(
        out.contains("policy.toml:8:13: services[0].split.weights.v3: unknown version `v3`"),
        "{out}"
    );
}

#[test]
fn a_valid_config_passes() {
    let config = format!(
        "listen = [\"127.0.0.1:8080\", \"[::1]:8080\"]\npolicy_file = \"policy.toml\"\n{UPSTREAMS}\
         [timeouts]\nconnect = \"500ms\"\nupstream_response = \"10s\"\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n"
    );
    let policy = format!(
        "{POLICY}override = {{ header = \"X-Gray\", version = \"v2\" }}\n\
         [[services.rules]]\nname = \"beta\"\nversion = \"v2\"\nwhen = {{ header = \"X-Uid\", range = {{ start = 1, end = 5000, exclusive = true }} }}\n\
         [services.split]\nweights = {{ v2 = 5.5 }}\nby = {{ cookie = \"uid\" }}\n"
    );
    let (c, _) = check_files(&[("graygate.toml", &config), ("policy.toml", &policy)]);
    assert_eq!(c.code, 0, "{}", c.out);
    assert!(
        c.out.contains("is valid: 2 listener(s), 2 upstream(s)"),
        "{}",
        c.out
    );
    assert!(
        !c.out.contains("warning"),
        "loopback listeners only: {}",
        c.out
    );
}

/// An override anyone can use is valid, but `check` warns about it when a listener is reachable
/// beyond loopback; a guarded one (`from`, `secret` or `key`) is not warned about.
#[test]
fn an_unguarded_override_on_a_public_listener_is_warned_about() {
    let config = format!("listen = [\"0.0.0.0:8080\"]\npolicy_file = \"policy.toml\"\n{UPSTREAMS}");
    let open = format!("{POLICY}override = {{ header = \"X-Gray\", version = \"v2\" }}\n");
    let (c, dir) = check_files(&[("graygate.toml", &config), ("policy.toml", &open)]);
    assert_eq!(c.code, 0, "{}", c.out);
    assert!(
        c.out.contains(&format!(
            "graygate: warning: {dir}/policy.toml: services[0].override: any client of 0.0.0.0:8080 can send `always` and reach version v2 of web; limit it with `from` (networks), `secret` or `key`"
        )),
        "{}",
        c.out
    );
    let guarded = format!(
        "{POLICY}override = {{ header = \"X-Gray\", version = \"v2\", from = [\"10.0.0.0/8\"] }}\n"
    );
    let (c, _) = check_files(&[("graygate.toml", &config), ("policy.toml", &guarded)]);
    assert_eq!(c.code, 0, "{}", c.out);
    assert!(!c.out.contains("warning"), "{}", c.out);
}

/// `check` lists every `[admin]` token variable that is not set, each at its line; `import`,
/// which does not serve the admin API, does not need them.
#[test]
fn unset_token_variables_are_each_reported_and_import_does_not_need_them() {
    let text = "listen = [\"127.0.0.1:8080\"]\n[admin]\ntokens = [\n  { name = \"a\", token_env = \"GRAYGATE_E2E_UNSET_A\" },\n  { name = \"b\", token_env = \"GRAYGATE_E2E_UNSET_B\" },\n]\n";
    let (c, dir) = check_files(&[("graygate.toml", text)]);
    let out = c.out.replace(&format!("{dir}/"), "");
    assert_eq!(c.code, 1, "{out}");
    assert_eq!(
        out,
        "graygate: graygate.toml:4:17: admin.tokens[0].token_env: environment variable GRAYGATE_E2E_UNSET_A is not set (or empty)\n\
         graygate: graygate.toml:5:17: admin.tokens[1].token_env: environment variable GRAYGATE_E2E_UNSET_B is not set (or empty)\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("graygate.toml");
    std::fs::write(&config, text).unwrap();
    std::fs::write(dir.path().join("ips.txt"), "10.0.0.1\n10.0.0.2\n").unwrap();
    let out = std::process::Command::new(crate::support::binary())
        .args(["import", "--config"])
        .arg(&config)
        .args(["--list", "gray_ips"])
        .arg(dir.path().join("ips.txt"))
        .output()
        .expect("run graygate import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("imported 2 entries"), "{stdout}{stderr}");
}
