//! The command sequences of `docs/admin-api.md` stay true: every fenced block marked `tested` is
//! run here with the real `graygate ctl` against a started gateway, and what it prints must be
//! what the block shows.
//!
//! How a document is read:
//! - A ```` ```toml tested ```` block is a policy: the policy of the gateways that run the tested
//!   console blocks after it (until the next one); the first one is also the policy of those
//!   before it.
//! - Each `##` section with ```` ```console tested ```` blocks is one scenario: a fresh gateway
//!   (upstreams `stable` and `canary`, an admin API with a token, the policy above) runs its
//!   blocks in order, so that revisions count from the section's start.
//! - In a console block, a line starting with `$ ` is a command (after two spaces, `# ...` is a
//!   comment); the lines up to the next command are what it prints: the stderr of each command of
//!   a pipeline, then the stdout of the last. `...` within a line stands for any text, and a line
//!   that is only `...` for any number of lines (the run-to-run parts: times, traffic).
//! - Commands are `graygate ctl ...`, optionally piped into another (`a | b`), and
//!   `export GRAYGATE_ADMIN=... GRAYGATE_TOKEN=...`, which the test provides for its gateway.
//!   Every command must exit 0.

use crate::support::*;
use graygate::policy::PolicyDoc;
use std::path::Path;

/// A fenced block marked `tested`.
#[derive(Debug)]
struct Block {
    /// The `##` heading it is under.
    section: String,
    /// Its language: `toml` or `console`.
    lang: String,
    /// The line of its opening fence (1-based), for messages.
    line: usize,
    text: String,
}

/// Every block of `text` whose info string has the word `tested`, in order.
fn tested_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    // Inside a block that is not tested: until its closing fence.
    let mut skipping = false;
    for (i, line) in text.lines().enumerate() {
        if skipping {
            skipping = !line.trim_start().starts_with("```");
            continue;
        }
        if let Some(block) = &mut open {
            if line.trim_start().starts_with("```") {
                blocks.extend(open.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading.trim().to_string();
        } else if let Some(info) = line.trim_start().strip_prefix("```") {
            let words: Vec<&str> = info.split_whitespace().collect();
            if words.contains(&"tested") {
                open = Some(Block {
                    section: section.clone(),
                    lang: words[0].to_string(),
                    line: i + 1,
                    text: String::new(),
                });
            } else {
                skipping = true;
            }
        }
    }
    assert!(open.is_none(), "a tested block is not closed");
    blocks
}

/// One command of a console block and what it prints.
#[derive(Debug)]
struct Step {
    /// The line of the command in the document.
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The commands of a console block.
fn steps(block: &Block) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (i, line) in block.text.lines().enumerate() {
        if let Some(command) = line.strip_prefix("$ ") {
            let command = match command.find("  #") {
                Some(at) => &command[..at],
                None => command,
            };
            steps.push(Step {
                line: block.line + 1 + i,
                command: command.trim().to_string(),
                expected: Vec::new(),
            });
        } else {
            let step = steps.last_mut().unwrap_or_else(|| {
                panic!(
                    "docs line {}: output before the first command",
                    block.line + 1 + i
                )
            });
            step.expected.push(line.to_string());
        }
    }
    steps
}

/// The words of a command: split at spaces, with '...' and "..." quoting.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => word.push(c),
        }
    }
    assert!(quote.is_none(), "unclosed quote in `{command}`");
    if started || !word.is_empty() {
        out.push(word);
    }
    out
}

/// Does `got` read as `pattern`, where `...` stands for any text?
fn line_matches(pattern: &str, got: &str) -> bool {
    let mut parts = pattern.split("...");
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = got.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Do the lines `got` read as the lines `pattern` (a line `...` stands for any lines)?
fn lines_match(pattern: &[String], got: &[&str]) -> bool {
    match pattern.split_first() {
        None => got.is_empty(),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=got.len()).any(|skip| lines_match(rest, &got[skip..]))
        }
        Some((first, rest)) => match got.split_first() {
            Some((line, more)) => line_matches(first, line) && lines_match(rest, more),
            None => false,
        },
    }
}

/// Runs one step against `ctl`; panics naming the document line when it prints anything else.
fn run(ctl: &Ctl, step: &Step) {
    let commands: Vec<Vec<String>> = step.command.split(" | ").map(words).collect();
    if commands[0].first().map(String::as_str) == Some("export") {
        for assignment in &commands[0][1..] {
            let name = assignment.split('=').next().unwrap_or_default();
            assert!(
                ["GRAYGATE_ADMIN", "GRAYGATE_TOKEN"].contains(&name),
                "docs line {}: the test sets GRAYGATE_ADMIN and GRAYGATE_TOKEN, not {name}",
                step.line
            );
        }
        assert!(step.expected.iter().all(|l| l.trim().is_empty()));
        return;
    }
    let mut shown = String::new();
    let mut input: Option<String> = None;
    for command in &commands {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let Some(["graygate", "ctl", args @ ..]) = Some(args.as_slice()) else {
            panic!(
                "docs line {}: `{}` is not a graygate ctl command",
                step.line, step.command
            );
        };
        let run = ctl.run_with_input(args, input.as_deref());
        assert_eq!(
            run.code, 0,
            "docs line {}: `{}` failed: {run:?}",
            step.line, step.command
        );
        shown.push_str(&run.stderr);
        input = Some(run.stdout);
    }
    shown.push_str(&input.unwrap_or_default());
    let got: Vec<&str> = shown.lines().collect();
    let mut want = step.expected.clone();
    while want.last().is_some_and(|l| l.trim().is_empty()) {
        want.pop();
    }
    assert!(
        lines_match(&want, &got),
        "docs line {}: `{}` printed\n{shown}\nbut the document shows\n{}",
        step.line,
        step.command,
        want.join("\n")
    );
}

/// Runs every tested block of the document at `path`; returns how many commands it ran.
async fn run_document(path: &Path) -> usize {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let blocks = tested_blocks(&text);
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let read = |block: &Block| -> PolicyDoc {
        toml::from_str(&block.text)
            .unwrap_or_else(|e| panic!("docs line {}: the policy does not read: {e}", block.line))
    };
    let mut policy: Option<PolicyDoc> = blocks.iter().find(|b| b.lang == "toml").map(read);
    let mut current: Option<(String, Gateway)> = None;
    let mut ran = 0;
    for block in &blocks {
        match block.lang.as_str() {
            "toml" => policy = Some(read(block)),
            "console" => {
                if current.as_ref().is_none_or(|(s, _)| *s != block.section) {
                    let policy = policy.clone().unwrap_or_else(|| {
                        panic!(
                            "docs line {}: the document has no tested policy",
                            block.line
                        )
                    });
                    let mut builder = gateway()
                        .upstream("stable", &stable)
                        .upstream("canary", &canary)
                        .admin_token("alice", TOKEN);
                    for route in policy.routes {
                        builder = builder.route(route);
                    }
                    for service in policy.services {
                        builder = builder.service(service);
                    }
                    current = Some((block.section.clone(), builder.start().await));
                }
                let (_, gg) = current.as_ref().expect("a gateway");
                let ctl = gg.ctl();
                for step in steps(block) {
                    run(&ctl, &step);
                    ran += 1;
                }
            }
            other => panic!("docs line {}: a tested `{other}` block", block.line),
        }
    }
    ran
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_documents_command_sequences_print_what_they_show() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/admin-api.md");
    let ran = run_document(&path).await;
    assert!(ran >= 10, "only {ran} documented commands ran");
}

#[test]
fn the_reader_of_documents_matches_lines_and_finds_commands() {
    let text = "## A\n```toml tested\nx = 1\n```\n```sh\n## not a heading\n```\n\
                ## B\n```console tested\n$ graygate ctl a 'b c'  # note\nout ...\n...\nend\n```\n";
    let blocks = tested_blocks(text);
    let found: Vec<(&str, &str, usize)> = blocks
        .iter()
        .map(|b| (b.section.as_str(), b.lang.as_str(), b.line))
        .collect();
    assert_eq!(found, vec![("A", "toml", 2), ("B", "console", 9)]);
    let steps = steps(&blocks[1]);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].line, 10);
    assert_eq!(
        words(&steps[0].command),
        vec!["graygate", "ctl", "a", "b c"]
    );
    let want = &steps[0].expected;
    assert!(lines_match(want, &["out 1", "x", "y", "end"]));
    assert!(lines_match(want, &["out ", "end"]));
    assert!(!lines_match(want, &["out 1", "x"]));
    assert!(!lines_match(want, &["outside", "end"]));
    assert!(line_matches(
        "revision ...: web ... as before",
        "revision 5: web x as before"
    ));
    assert!(!line_matches("a...b", "ab c"));
    assert!(line_matches("a...b", "a b"));
    assert!(line_matches("...", ""));
}
