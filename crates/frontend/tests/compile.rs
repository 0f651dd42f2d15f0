//! The compiler's behaviour per instruction, flag, heredoc form and
//! expansion rule, checked on the plan it produces (config, history and
//! graph). Expectations follow BuildKit's dockerfile2llb.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rbuild_frontend::{
    CompileError, CompileOptions, ImageResolver, Op, Plan, ResolvedImage, compile, parser,
};
use rbuild_oci::{Descriptor, Digest, ImageConfig, Platform, media_type};

/// Images by name, and which names were asked for.
#[derive(Default)]
struct Images {
    configs: BTreeMap<String, ImageConfig>,
    asked: RefCell<Vec<String>>,
}

impl ImageResolver for Images {
    fn resolve(&self, name: &str) -> Result<Option<ResolvedImage>, String> {
        self.asked.borrow_mut().push(name.to_string());
        Ok(self.configs.get(name).map(|config| ResolvedImage {
            name: name.to_string(),
            manifest: Descriptor::new(media_type::OCI_MANIFEST, Digest::of(name.as_bytes()), 1),
            config: config.clone(),
        }))
    }
}

fn base_image(env: &[&str]) -> ImageConfig {
    let mut config = ImageConfig::scratch(&Platform::host());
    config.config.env = Some(env.iter().map(|e| e.to_string()).collect());
    config
}

fn compile_with(
    src: &str,
    args: &[(&str, &str)],
    target: Option<&str>,
    images: &Images,
) -> Result<Plan, CompileError> {
    let file = parser::parse(src.as_bytes()).expect("parses");
    let options = CompileOptions {
        build_args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        target: target.map(str::to_string),
        platform: Platform::host(),
        context_excludes: vec![],
    };
    compile(&file, &options, images)
}

fn plan(src: &str) -> Plan {
    compile_with(src, &[], None, &Images::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn error(src: &str) -> String {
    compile_with(src, &[], None, &Images::default())
        .expect_err("should fail")
        .to_string()
}

fn label(plan: &Plan, key: &str) -> String {
    plan.target()
        .unwrap()
        .config
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .cloned()
        .unwrap_or_default()
}

fn history(plan: &Plan) -> Vec<String> {
    plan.target()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.history.created_by.clone().unwrap_or_default())
        .collect()
}

fn exec_ops(plan: &Plan) -> Vec<rbuild_frontend::ExecOp> {
    plan.graph
        .nodes()
        .filter_map(|(_, n)| match &n.op {
            Op::Exec(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn arg_scoping() {
    let src = "ARG G=global\nARG ONLY_GLOBAL=g2\nFROM scratch\nARG G\nARG L=local-$G\nENV E=env\nARG E=arg\n\
               LABEL g=$G l=$L e=$E og=${ONLY_GLOBAL:-unset}\n";
    let p = plan(src);
    assert_eq!(label(&p, "g"), "global", "ARG G inherits the global value");
    assert_eq!(label(&p, "l"), "local-global");
    assert_eq!(label(&p, "e"), "env", "ENV shadows an ARG of the same name");
    assert_eq!(
        label(&p, "og"),
        "unset",
        "globals are not visible in a stage without ARG"
    );
    let p = compile_with(
        src,
        &[("G", "override"), ("L", "cli")],
        None,
        &Images::default(),
    )
    .unwrap();
    assert_eq!(label(&p, "g"), "override");
    assert_eq!(label(&p, "l"), "cli");
    assert!(p.unused_build_args.is_empty());
    let p = compile_with(
        src,
        &[("NOPE", "x"), ("HTTP_PROXY", "p")],
        None,
        &Images::default(),
    )
    .unwrap();
    assert_eq!(
        p.unused_build_args,
        ["NOPE"],
        "proxy args are always accepted"
    );
}

#[test]
fn platform_args() {
    let host = Platform::host();
    let p = plan(
        "FROM scratch\nARG TARGETARCH\nARG BUILDPLATFORM\nLABEL a=$TARGETARCH p=$BUILDPLATFORM u=$TARGETOS\n",
    );
    assert_eq!(label(&p, "a"), host.architecture);
    assert_eq!(label(&p, "p"), host.to_string());
    assert_eq!(label(&p, "u"), "", "not declared in the stage");
    assert!(
        p.lints
            .iter()
            .any(|l| l.rule == "UndefinedVar" && l.message.contains("$TARGETOS"))
    );
    // In the global scope they need no declaration.
    let mut images = Images::default();
    images
        .configs
        .insert(format!("base-{}", host.architecture), base_image(&[]));
    let p = compile_with("FROM base-$TARGETARCH\n", &[], None, &images).unwrap();
    assert_eq!(p.stages.len(), 1);
}

#[test]
fn env_forms_and_order() {
    let p = plan("FROM scratch\nENV A=1\nENV A=2 B=$A\nENV C d e\nENV \"Q\"=\"x y\" R=a\\ b\n");
    let env = p.target().unwrap().config.env.clone().unwrap();
    assert_eq!(
        env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "A=2",
            "B=1",
            "C=d e",
            "Q=x y",
            "R=a b"
        ]
    );
    assert_eq!(history(&p)[1], "ENV A=2 B=1");
    // A base image's PATH is kept, and ENV can extend it.
    let mut images = Images::default();
    images
        .configs
        .insert("base".into(), base_image(&["PATH=/custom", "X=1"]));
    let p = compile_with("FROM base\nENV PATH=$PATH:/more\n", &[], None, &images).unwrap();
    assert_eq!(
        p.target().unwrap().config.env.clone().unwrap(),
        ["PATH=/custom:/more", "X=1"]
    );
}

#[test]
fn metadata_instructions() {
    let p = plan(
        "FROM scratch\nLABEL \"a b\"=\"c d\" e=f\nEXPOSE 80 53/udp 8000-8001\nVOLUME [\"/a\", \"/b\"]\nVOLUME /c /d\n\
         STOPSIGNAL SIGKILL\nUSER 1000:1000\nWORKDIR /w\nWORKDIR x/../y\nMAINTAINER me\n",
    );
    let stage = p.target().unwrap();
    assert_eq!(label(&p, "a b"), "c d");
    let ports: Vec<&String> = stage
        .config
        .exposed_ports
        .as_ref()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
    let volumes: Vec<&String> = stage.config.volumes.as_ref().unwrap().keys().collect();
    assert_eq!(volumes, ["/a", "/b", "/c", "/d"]);
    assert_eq!(stage.config.stop_signal.as_deref(), Some("SIGKILL"));
    assert_eq!(stage.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(stage.config.working_dir.as_deref(), Some("/w/y"));
    assert_eq!(stage.author.as_deref(), Some("me"));
    assert_eq!(
        history(&p),
        [
            "LABEL a b=c d e=f",
            "EXPOSE map[53/udp:{} 80/tcp:{} 8000/tcp:{} 8001/tcp:{}]",
            "VOLUME [/a /b]",
            "VOLUME [/c /d]",
            "STOPSIGNAL SIGKILL",
            "USER 1000:1000",
            "WORKDIR /w",
            "WORKDIR /w/y",
            "MAINTAINER me",
        ]
    );
    assert!(error("FROM scratch\nSTOPSIGNAL SIGNOPE\n").contains("invalid signal"));
    assert!(error("FROM scratch\nEXPOSE 80/xyz\n").contains("invalid proto"));
    assert!(error("FROM scratch\nVOLUME [\"\"]\n").contains("can not be an empty string"));
}

#[test]
fn cmd_entrypoint_shell() {
    let p = plan("FROM scratch\nCMD [\"a\"]\nENTRYPOINT [\"e\"]\n");
    assert_eq!(
        p.target().unwrap().config.cmd.as_deref(),
        Some(&["a".to_string()][..]),
        "CMD set in this stage stays"
    );
    let p = plan(
        "FROM scratch\nSHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]\nCMD echo $HOME\nENTRYPOINT exec run\n",
    );
    let stage = p.target().unwrap();
    assert_eq!(
        stage.config.cmd.clone().unwrap(),
        ["/bin/bash", "-o", "pipefail", "-c", "echo $HOME"],
        "CMD is not expanded"
    );
    assert_eq!(
        stage.config.entrypoint.clone().unwrap(),
        ["/bin/bash", "-o", "pipefail", "-c", "exec run"]
    );
    assert_eq!(
        history(&p)[1],
        r#"CMD ["/bin/bash" "-o" "pipefail" "-c" "echo $HOME"]"#
    );
    assert!(error("FROM scratch\nSHELL /bin/sh\n").contains("JSON form"));
}

#[test]
fn healthcheck() {
    let p = plan(
        "FROM scratch\nHEALTHCHECK --interval=1m30s --timeout=3s --start-period=1s --start-interval=2s --retries=5 CMD curl -f x\n",
    );
    let hc = p.target().unwrap().config.healthcheck.clone().unwrap();
    assert_eq!(hc.test, ["CMD-SHELL", "curl -f x"]);
    assert_eq!(
        (
            hc.interval,
            hc.timeout,
            hc.start_period,
            hc.start_interval,
            hc.retries
        ),
        (
            90_000_000_000,
            3_000_000_000,
            1_000_000_000,
            2_000_000_000,
            5
        )
    );
    assert_eq!(
        history(&p)[0],
        r#"HEALTHCHECK &{["CMD-SHELL" "curl -f x"] "1m30s" "3s" "1s" '\x05'}"#
    );
    let p = plan("FROM scratch\nHEALTHCHECK CMD [\"/bin/check\", \"-q\"]\nHEALTHCHECK NONE\n");
    assert_eq!(
        p.target().unwrap().config.healthcheck.clone().unwrap().test,
        ["NONE"]
    );
    assert!(error("FROM scratch\nHEALTHCHECK --interval=1 CMD x\n").contains("missing unit"));
    assert!(error("FROM scratch\nHEALTHCHECK --interval=1ns CMD x\n").contains("less than 1ms"));
    assert!(error("FROM scratch\nHEALTHCHECK --retries=-1 CMD x\n").contains("cannot be negative"));
    assert!(error("FROM scratch\nHEALTHCHECK --interval=1s NONE\n").contains("takes no options"));
    assert!(error("FROM scratch\nHEALTHCHECK --bogus=1 CMD x\n").contains("unknown flag: --bogus"));
}

#[test]
fn onbuild_is_recorded_and_triggers_run_in_children() {
    let p = plan("FROM scratch\nONBUILD RUN echo hi\nONBUILD COPY a /b\n");
    assert_eq!(
        p.target().unwrap().config.on_build.clone().unwrap(),
        ["RUN echo hi", "COPY a /b"]
    );
    assert!(
        history(&p).is_empty(),
        "BuildKit records no history for ONBUILD"
    );
    assert!(error("FROM scratch\nONBUILD ONBUILD RUN x\n").contains("isn't allowed"));
    assert!(error("FROM scratch\nONBUILD FROM x\n").contains("isn't allowed"));
    assert!(error("FROM scratch\nONBUILD COPY --bogus a b\n").contains("unknown flag"));

    let mut images = Images::default();
    let mut parent = base_image(&["PATH=/bin"]);
    parent.config.on_build = Some(vec!["LABEL from=trigger".into(), "COPY a /a".into()]);
    images.configs.insert("parent".into(), parent);
    let p = compile_with("FROM parent\nLABEL own=1\n", &[], None, &images).unwrap();
    let stage = p.target().unwrap();
    assert_eq!(
        history(&p),
        ["LABEL from=trigger", "COPY a /a # buildkit", "LABEL own=1"]
    );
    assert!(
        stage.config.on_build.is_none(),
        "triggers are not inherited"
    );
    assert_eq!(stage.steps[0].line, 1, "trigger steps point at the FROM");
}

#[test]
fn copy_heredocs_and_flags() {
    let p = plan(
        "FROM scratch\nARG WHO=world\nCOPY <<greeting.txt <<'raw.txt' /docs/\nhello $WHO \"q\"\ngreeting.txt\nliteral $WHO\nraw.txt\n\
         COPY <<-EOF /tabs.txt\n\tindented\n\tEOF\n",
    );
    let inline: Vec<Vec<(String, String)>> = p
        .graph
        .nodes()
        .filter_map(|(_, n)| match &n.op {
            Op::Inline(files) => Some(files.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        inline[0],
        [
            (
                "greeting.txt".to_string(),
                "hello world \"q\"\n".to_string()
            ),
            ("raw.txt".to_string(), "literal $WHO\n".to_string())
        ]
    );
    assert_eq!(inline[1], [("EOF".to_string(), "indented\n".to_string())]);
    assert_eq!(
        history(&p)[1],
        "COPY <<greeting.txt <<raw.txt /docs/ # buildkit"
    );

    let copy = |src: &str| -> rbuild_frontend::CopyOp {
        let p = plan(src);
        p.graph
            .nodes()
            .find_map(|(_, n)| match &n.op {
                Op::Copy(c) => Some(c.clone()),
                _ => None,
            })
            .unwrap()
    };
    let c = copy(
        "FROM scratch\nWORKDIR /app\nARG U=1000\nCOPY --chown=$U:staff --chmod=0640 --link a b* sub/\n",
    );
    assert_eq!(c.sources, ["a", "b*"]);
    assert_eq!(c.dest, "/app/sub/");
    assert_eq!(c.chown.as_deref(), Some("1000:staff"));
    assert_eq!(c.chmod, Some(0o640));
    assert!(!c.unpack);
    let e = copy("FROM scratch\nARG P=*.md\nCOPY --exclude=$P --exclude=tmp --parents a b/\n");
    assert_eq!(
        (e.exclude, e.parents),
        (vec!["*.md".to_string(), "tmp".to_string()], true)
    );
    let a = copy("FROM scratch\nADD x.tar.gz /x/\n");
    assert!(a.unpack);
    assert!(!copy("FROM scratch\nADD --unpack=false x.tar.gz /x/\n").unpack);
    assert!(error("FROM scratch\nCOPY --chmod=u+x a b\n").contains("--chmod"));
    assert!(
        error("FROM scratch\nCOPY --checksum=sha256:0 a b\n").contains("unknown flag: --checksum")
    );
    assert!(error("FROM scratch\nADD https://example.com/x /x\n").contains("ADD from a URL"));
    assert!(error("FROM scratch\nCOPY a\n").contains("at least two arguments"));
    assert!(error("FROM scratch\nCOPY --from=9 a b\n").contains("no earlier stage"));
}

#[test]
fn run_forms_env_and_history() {
    let src = "FROM scratch\nARG A=1\nARG B\nENV E=e\nWORKDIR /w\nUSER app\nRUN echo $A\nRUN [\"ls\", \"-l\"]\n\
               RUN --network=none --mount=type=cache,target=/c <<EOF\nset -e\necho script\nEOF\n\
               RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\nRUN cat <<A <<B > /out\na\nA\nb\nB\n";
    let p = compile_with(
        src,
        &[("HTTP_PROXY", "http://proxy")],
        None,
        &Images::default(),
    )
    .unwrap();
    let runs = exec_ops(&p);
    assert_eq!(runs[0].args, ["/bin/sh", "-c", "echo $A"]);
    assert_eq!(
        runs[0].env,
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "E=e",
            "A=1",
            "HTTP_PROXY=http://proxy"
        ]
    );
    assert_eq!(
        (
            runs[0].cwd.as_str(),
            runs[0].user.as_deref(),
            runs[0].network.as_str()
        ),
        ("/w", Some("app"), "default")
    );
    assert_eq!(runs[1].args, ["ls", "-l"]);
    assert_eq!(runs[2].args, ["/bin/sh", "-c", "set -e\necho script\n"]);
    assert_eq!(runs[2].network, "none");
    assert_eq!(runs[2].mounts[0].spec, "type=cache,target=/c");
    assert_eq!(runs[3].args, ["/dev/pipes/EOF"]);
    assert_eq!(
        runs[3].files,
        [(
            "/dev/pipes/EOF".to_string(),
            "#!/usr/bin/env python3\nprint(1)\n".to_string()
        )]
    );
    assert_eq!(
        runs[4].args,
        ["/bin/sh", "-c", "cat <<A <<B > /out\na\nA\nb\nB"]
    );
    let h = history(&p);
    assert_eq!(h[5], "RUN |2 A=1 B= /bin/sh -c echo $A # buildkit");
    assert_eq!(h[6], "RUN |2 A=1 B= ls -l # buildkit");
    assert!(
        error("FROM scratch\nRUN --mount=type=nope,target=/x true\n")
            .contains("unsupported mount type")
    );
    assert!(error("FROM scratch\nRUN --mount=type=cache true\n").contains("target is required"));
    assert!(
        error("FROM scratch\nRUN --mount=type=bind,target=/x,bogus=1 true\n")
            .contains("unexpected key")
    );
    assert!(
        error("FROM scratch\nRUN --network=bridge true\n").contains("unsupported network mode")
    );
    // Exec form plus a heredoc is an error (here the body lines are not a
    // heredoc for the parser, and fail as instructions).
    assert!(
        compile_with(
            "FROM scratch\nRUN [\"cat\"] <<EOF\nx\nEOF\n",
            &[],
            None,
            &Images::default()
        )
        .is_err()
    );
    assert!(error("FROM scratch\nRUN --bogus true\n").contains("unknown flag: --bogus"));
}

#[test]
fn stages_dependencies_and_pruning() {
    let mut images = Images::default();
    images.configs.insert("used".into(), base_image(&[]));
    images.configs.insert("copied".into(), base_image(&[]));
    let src = "FROM unused AS never\nFROM used AS Base\nFROM scratch AS files\nCOPY a /a\n\
               FROM base AS final\nCOPY --from=files /a /a\nCOPY --from=1 /x /x\nCOPY --from=copied /y /y\n\
               RUN --mount=type=bind,from=files,target=/m true\n";
    let p = compile_with(src, &[], None, &images).unwrap();
    assert_eq!(
        p.stages
            .iter()
            .map(|s| s.name.clone().unwrap())
            .collect::<Vec<_>>(),
        ["base", "files", "final"]
    );
    assert!(
        !images.asked.borrow().contains(&"unused".to_string()),
        "an unneeded stage's base is never resolved"
    );
    let p = compile_with(src, &[], Some("FILES"), &images).unwrap();
    assert_eq!(
        p.stages.len(),
        1,
        "target names are case-insensitive; only what it needs is compiled"
    );
    assert!(
        compile_with(src, &[], Some("nope"), &images)
            .unwrap_err()
            .to_string()
            .contains("could not be found")
    );
    assert!(error("FROM scratch AS a\nFROM scratch AS A\n").contains("duplicate stage name"));
    assert!(error("COPY a b\nFROM scratch\n").contains("no build stage"));
}

#[test]
fn graph_digests_are_stable_and_input_sensitive() {
    let src = "ARG V=1\nFROM scratch\nARG V\nCOPY a /a\nRUN echo $V\nCOPY b /b\n";
    let digests = |args: &[(&str, &str)]| -> Vec<String> {
        let p = compile_with(src, args, None, &Images::default()).unwrap();
        p.graph.nodes().map(|(_, n)| n.digest.to_string()).collect()
    };
    assert_eq!(digests(&[]), digests(&[]));
    let (a, b) = (digests(&[]), digests(&[("V", "2")]));
    assert_eq!(a.len(), b.len());
    // scratch, context, first COPY: unchanged; the RUN and everything after it: changed.
    assert_eq!(a[..3], b[..3]);
    assert_ne!(a[3], b[3]);
    assert_ne!(a[a.len() - 1], b[b.len() - 1]);
}
