//! Registry credentials kept the way the docker CLI keeps them (docker 20–27),
//! so that a `docker login` is seen by rbuild and an rbuild login by docker.
//!
//! `config.json` has three places for them: `auths` (base64 `user:password`
//! in the file itself), `credHelpers` (a `docker-credential-<suffix>` program
//! per registry) and `credsStore` (a program for every other registry). A
//! configured program wins over `auths`; its registries keep only an empty
//! marker entry in `auths`.
//!
//! Docker Hub is filed under `https://index.docker.io/v1/`, any other
//! registry under `host[:port]`. Reading is a little more forgiving than
//! docker is: an `auths` or `credHelpers` key naming the same host in another
//! spelling (`http://host`, `https://host/v2/`, `docker.io` for Docker Hub) is
//! also accepted, though the key spelled docker's way comes first.
//!
//! Not supported: docker 28's `DOCKER_AUTH_CONFIG` variable, and the
//! `registrytoken` of `auths` entries (a bearer token docker hands to its
//! daemon as it is; docker itself never writes one).

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `auths` key, helper server URL and `credHelpers` key of Docker Hub.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// Names that all mean Docker Hub.
const DOCKER_HUB_HOSTS: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
const HELPER_PREFIX: &str = "docker-credential-";
/// The username a helper reports when its secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// What helpers say (on stdout by convention, some on stderr) when they have
/// nothing for a server; the full standard text ends in "in native keychain".
const NOT_FOUND_MESSAGE: &str = "credentials not found";
/// How much of a failing helper's output goes into an error.
const HELPER_MESSAGE_LIMIT: usize = 300;

/// What a registry login is made of.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A username and a password (or access token used as one).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token, used instead of a password to get registry
    /// tokens. `username` is empty when it came from a credential helper:
    /// helpers do not keep it.
    IdentityToken { username: String, token: String },
}

impl Credential {
    pub fn username(&self) -> &str {
        match self {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                username
            }
        }
    }

    /// What goes into a helper's `Secret`, and the username that goes with it.
    fn helper_pair(&self) -> (&str, &str) {
        match self {
            Credential::Basic { username, password } => (username, password),
            Credential::IdentityToken { token, .. } => (TOKEN_USERNAME, token),
        }
    }

    fn secret(&self) -> &str {
        self.helper_pair().1
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = format_args!("<redacted>");
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &redacted)
                .finish(),
            Credential::IdentityToken { username, .. } => f
                .debug_struct("IdentityToken")
                .field("username", username)
                .field("token", &redacted)
                .finish(),
        }
    }
}

/// Why credentials could not be read or written. Messages name the file or
/// the helper, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// config.json exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// config.json (or its directory, or the temporary file beside it)
    /// cannot be written.
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// config.json is not JSON, or a credentials field has the wrong type.
    #[error("{path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    /// The `auth` of the entry for `registry` does not decode.
    #[error("{path}: the `auth` of {registry:?} is not base64 of \"username:password\"")]
    MalformedAuth { path: PathBuf, registry: String },
    /// The configured `docker-credential-*` program is not on `$PATH`.
    #[error("credential helper {helper} (configured in {path}) is not on PATH")]
    HelperNotFound { helper: String, path: PathBuf },
    /// The helper could not be started or talked to.
    #[error("running credential helper {helper} {action}: {source}")]
    HelperSpawn {
        helper: String,
        action: &'static str,
        source: io::Error,
    },
    /// The helper exited with an error; `message` is what it printed (a
    /// stored secret is blanked out of it).
    #[error("credential helper {helper} {action} failed ({status}): {message}")]
    HelperFailed {
        helper: String,
        action: &'static str,
        status: ExitStatus,
        message: String,
    },
    /// The helper's `get` printed something that is not its JSON answer.
    #[error("credential helper {helper} get answered with something other than JSON credentials")]
    HelperReply { helper: String },
}

/// Docker's `config.json`: its credentials, and everything else in it, kept
/// as it is when the file is rewritten.
pub struct CredentialStore {
    path: PathBuf,
    config: Map<String, Value>,
    /// Where to look for helpers instead of `$PATH`.
    helper_path: Option<OsString>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> PathBuf {
        config_path(std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME"))
    }

    /// Reads `path`; a missing (or empty) file holds no credentials.
    pub fn open(path: &Path) -> Result<CredentialStore, CredentialError> {
        let config = match fs::read(path) {
            Ok(bytes) => parse_config(path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Map::new(),
            Err(source) => {
                return Err(CredentialError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let store = CredentialStore {
            path: path.to_owned(),
            config,
            helper_path: None,
        };
        store.check_shape()?;
        Ok(store)
    }

    /// Looks for `docker-credential-*` programs in `search_path` (a list of
    /// directories like `$PATH`) instead of `$PATH`; meant for tests.
    pub fn with_helper_path(mut self, search_path: impl Into<OsString>) -> CredentialStore {
        self.helper_path = Some(search_path.into());
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The login for `registry` (`docker.io`, `host:port`, or a URL such as
    /// `https://host/v2/`), or `None` when there is none.
    pub fn get(&self, registry: &str) -> Result<Option<Credential>, CredentialError> {
        let key = config_key(registry);
        if let Some(helper) = self.helper_for(&key)? {
            return self.helper_get(&helper, &key);
        }
        match self.find_auth(&key)? {
            Some((name, entry)) => entry.credential(&self.path, name),
            None => Ok(None),
        }
    }

    /// Records a login, in the registry's helper if one is configured, else
    /// in the file.
    pub fn store(
        &mut self,
        registry: &str,
        credential: &Credential,
    ) -> Result<(), CredentialError> {
        let key = config_key(registry);
        let entry = match self.helper_for(&key)? {
            Some(helper) => {
                self.helper_store(&helper, &key, credential)?;
                // docker writes this marker too; tools that list logins by
                // reading `auths` rely on it.
                Map::new()
            }
            None => file_entry(credential),
        };
        let entry = Value::Object(entry);
        let auths = self.auths_mut()?;
        if auths.get(&key) == Some(&entry) {
            return Ok(());
        }
        auths.insert(key, entry);
        self.save()
    }

    /// Forgets the login for `registry`: in its helper if one is configured,
    /// and every `auths` entry naming it. Returns whether there was anything
    /// to forget.
    pub fn erase(&mut self, registry: &str) -> Result<bool, CredentialError> {
        let key = config_key(registry);
        let mut erased = match self.helper_for(&key)? {
            Some(helper) => self.helper_erase(&helper, &key)?,
            None => false,
        };
        let removed = match self.config.get_mut("auths") {
            Some(Value::Object(auths)) => {
                let before = auths.len();
                // `retain` keeps the order of the other entries, which
                // `remove` does not with serde_json's preserve_order.
                auths.retain(|name, _| !same_registry(name, &key));
                auths.len() != before
            }
            _ => false,
        };
        if removed {
            self.save()?;
            erased = true;
        }
        Ok(erased)
    }

    fn malformed(&self, reason: String) -> CredentialError {
        CredentialError::Malformed {
            path: self.path.clone(),
            reason,
        }
    }

    /// Rejects at open what docker would fail to load, so that later lookups
    /// only fail for reasons of their own.
    fn check_shape(&self) -> Result<(), CredentialError> {
        if let Some(auths) = self.auths()? {
            for (name, value) in auths {
                AuthEntry::parse(&self.path, name, value)?;
            }
        }
        if let Some(helpers) = self.cred_helpers()? {
            for (name, value) in helpers {
                self.helper_name(name, value)?;
            }
        }
        self.creds_store()?;
        Ok(())
    }

    fn auths(&self) -> Result<Option<&Map<String, Value>>, CredentialError> {
        self.object_field("auths")
    }

    fn cred_helpers(&self) -> Result<Option<&Map<String, Value>>, CredentialError> {
        self.object_field("credHelpers")
    }

    fn object_field(&self, field: &str) -> Result<Option<&Map<String, Value>>, CredentialError> {
        match self.config.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(self.malformed(format!("`{field}` is not an object"))),
        }
    }

    fn creds_store(&self) -> Result<Option<&str>, CredentialError> {
        match self.config.get("credsStore") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.malformed("`credsStore` is not a string".to_string())),
        }
    }

    fn helper_name<'a>(
        &self,
        registry: &str,
        value: &'a Value,
    ) -> Result<&'a str, CredentialError> {
        match value {
            Value::Null => Ok(""),
            Value::String(s) => Ok(s),
            _ => Err(self.malformed(format!("`credHelpers.{registry}` is not a string"))),
        }
    }

    fn auths_mut(&mut self) -> Result<&mut Map<String, Value>, CredentialError> {
        let auths = self
            .config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if auths.is_null() {
            *auths = Value::Object(Map::new());
        }
        match auths {
            Value::Object(map) => Ok(map),
            _ => Err(CredentialError::Malformed {
                path: self.path.clone(),
                reason: "`auths` is not an object".to_string(),
            }),
        }
    }

    /// The helper suffix for `key`, as docker picks it: the registry's
    /// `credHelpers` entry (where an empty one means "the file"), else
    /// `credsStore`.
    fn helper_for(&self, key: &str) -> Result<Option<String>, CredentialError> {
        if let Some(helpers) = self.cred_helpers()? {
            let found = helpers
                .get_key_value(key)
                .or_else(|| helpers.iter().find(|(name, _)| same_registry(name, key)));
            if let Some((name, value)) = found {
                let helper = self.helper_name(name, value)?;
                return Ok((!helper.is_empty()).then(|| helper.to_string()));
            }
        }
        Ok(self.creds_store()?.map(str::to_string))
    }

    /// The `auths` entry for `key`: docker's own spelling first, then any
    /// other spelling of the same host, in file order.
    fn find_auth(&self, key: &str) -> Result<Option<(&str, AuthEntry<'_>)>, CredentialError> {
        let Some(auths) = self.auths()? else {
            return Ok(None);
        };
        let found = auths
            .get_key_value(key)
            .or_else(|| auths.iter().find(|(name, _)| same_registry(name, key)));
        match found {
            Some((name, value)) => Ok(Some((name, AuthEntry::parse(&self.path, name, value)?))),
            None => Ok(None),
        }
    }

    fn helper_get(&self, helper: &str, key: &str) -> Result<Option<Credential>, CredentialError> {
        let reply = self.run_helper(helper, "get", key.as_bytes())?;
        if !reply.status.success() {
            if reply.says_not_found() {
                return Ok(None);
            }
            return Err(reply.failure(helper, "get", None));
        }
        #[derive(Deserialize)]
        struct HelperCredential {
            #[serde(rename = "Username", alias = "username", default)]
            username: String,
            #[serde(rename = "Secret", alias = "secret", default)]
            secret: String,
        }
        // The serde error is dropped: it may quote the secret.
        let reply: HelperCredential =
            serde_json::from_slice(&reply.stdout).map_err(|_| CredentialError::HelperReply {
                helper: helper_program(helper),
            })?;
        if reply.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if reply.username == TOKEN_USERNAME {
            Credential::IdentityToken {
                username: String::new(),
                token: reply.secret,
            }
        } else {
            Credential::Basic {
                username: reply.username,
                password: reply.secret,
            }
        }))
    }

    fn helper_store(
        &self,
        helper: &str,
        key: &str,
        credential: &Credential,
    ) -> Result<(), CredentialError> {
        let (username, secret) = credential.helper_pair();
        let input = serde_json::json!({
            "ServerURL": key,
            "Username": username,
            "Secret": secret,
        })
        .to_string();
        let reply = self.run_helper(helper, "store", input.as_bytes())?;
        if !reply.status.success() {
            return Err(reply.failure(helper, "store", Some(credential.secret())));
        }
        Ok(())
    }

    fn helper_erase(&self, helper: &str, key: &str) -> Result<bool, CredentialError> {
        let reply = self.run_helper(helper, "erase", key.as_bytes())?;
        if reply.status.success() {
            return Ok(true);
        }
        if reply.says_not_found() {
            return Ok(false);
        }
        Err(reply.failure(helper, "erase", None))
    }

    fn run_helper(
        &self,
        helper: &str,
        action: &'static str,
        input: &[u8],
    ) -> Result<HelperReply, CredentialError> {
        let program = helper_program(helper);
        let spawn_error = |source| CredentialError::HelperSpawn {
            helper: program.clone(),
            action,
            source,
        };
        let path = self
            .find_helper(&program)
            .ok_or_else(|| CredentialError::HelperNotFound {
                helper: program.clone(),
                path: self.path.clone(),
            })?;
        let mut child = spawn_helper(&path, action).map_err(spawn_error)?;
        let written = match child.stdin.take() {
            // Dropping stdin closes it: helpers read to end of input.
            Some(mut stdin) => match stdin.write_all(input) {
                // A helper may answer without reading all of its input.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                other => other,
            },
            None => Ok(()),
        };
        let output = child.wait_with_output().map_err(spawn_error)?;
        written.map_err(spawn_error)?;
        Ok(HelperReply {
            status: output.status,
            stdout: output.stdout,
            stderr: output.stderr,
        })
    }

    fn find_helper(&self, program: &str) -> Option<PathBuf> {
        // The suffix comes from the config file; it must not reach outside
        // the search path.
        if program.len() == HELPER_PREFIX.len() || program.contains('/') {
            return None;
        }
        let search = match &self.helper_path {
            Some(path) => path.clone(),
            None => std::env::var_os("PATH")?,
        };
        std::env::split_paths(&search)
            // As Go's exec.LookPath (which docker uses) now does: a relative
            // PATH entry would run whatever the working directory holds.
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    }

    fn save(&self) -> Result<(), CredentialError> {
        // docker indents its config.json with tabs; keeping that keeps diffs
        // of a hand-managed file small.
        let mut bytes = Vec::new();
        let mut serializer = serde_json::Serializer::with_formatter(
            &mut bytes,
            serde_json::ser::PrettyFormatter::with_indent(b"\t"),
        );
        self.config
            .serialize(&mut serializer)
            .map_err(|e| CredentialError::Write {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?;
        write_atomically(&self.path, &bytes).map_err(|source| CredentialError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// One `auths` entry, checked for shape but not yet decoded.
struct AuthEntry<'a> {
    auth: &'a str,
    username: &'a str,
    password: &'a str,
    identity_token: &'a str,
}

impl<'a> AuthEntry<'a> {
    fn parse(path: &Path, name: &str, value: &'a Value) -> Result<AuthEntry<'a>, CredentialError> {
        let malformed = |reason: String| CredentialError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let fields = match value {
            Value::Null => None,
            Value::Object(fields) => Some(fields),
            _ => return Err(malformed(format!("`auths.{name}` is not an object"))),
        };
        let field = |field: &str| match fields.and_then(|f| f.get(field)) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(malformed(format!("`auths.{name}.{field}` is not a string"))),
        };
        Ok(AuthEntry {
            auth: field("auth")?,
            username: field("username")?,
            password: field("password")?,
            identity_token: field("identitytoken")?,
        })
    }

    fn credential(&self, path: &Path, name: &str) -> Result<Option<Credential>, CredentialError> {
        // As docker: `auth`, when present, overrides `username`/`password`.
        let (username, password) = if self.auth.is_empty() {
            (self.username.to_string(), self.password.to_string())
        } else {
            decode_auth(self.auth).ok_or_else(|| CredentialError::MalformedAuth {
                path: path.to_owned(),
                registry: name.to_string(),
            })?
        };
        if !self.identity_token.is_empty() {
            return Ok(Some(Credential::IdentityToken {
                username,
                token: self.identity_token.to_string(),
            }));
        }
        if username.is_empty() && password.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credential::Basic { username, password }))
    }
}

/// How docker writes a login into `auths`.
fn file_entry(credential: &Credential) -> Map<String, Value> {
    let (username, password, token) = match credential {
        Credential::Basic { username, password } => (username, password.as_str(), None),
        Credential::IdentityToken { username, token } => (username, "", Some(token)),
    };
    let mut entry = Map::new();
    if !username.is_empty() || !password.is_empty() {
        let auth = STANDARD.encode(format!("{username}:{password}"));
        entry.insert("auth".to_string(), Value::String(auth));
    }
    if let Some(token) = token {
        entry.insert("identitytoken".to_string(), Value::String(token.clone()));
    }
    entry
}

fn decode_auth(auth: &str) -> Option<(String, String)> {
    // Go's decoder skips line breaks; unpadded values come from other tools.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = auth.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let decoded = String::from_utf8(LENIENT.decode(compact).ok()?).ok()?;
    let (username, password) = decoded.split_once(':')?;
    if username.is_empty() {
        return None;
    }
    Some((
        username.to_string(),
        password.trim_matches('\0').to_string(),
    ))
}

fn parse_config(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, CredentialError> {
    let malformed = |reason: String| CredentialError::Malformed {
        path: path.to_owned(),
        reason,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(config)) => Ok(config),
        Ok(_) => Err(malformed("it is not a JSON object".to_string())),
        // Syntax messages say what was expected, never what was found, so
        // they cannot leak a secret; other kinds might.
        Err(e) if e.is_syntax() || e.is_eof() => Err(malformed(e.to_string())),
        Err(e) => Err(malformed(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

fn config_path(docker_config: Option<OsString>, home: Option<OsString>) -> PathBuf {
    if let Some(dir) = docker_config.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("config.json");
    }
    let home = home
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir)
        .unwrap_or_default();
    home.join(".docker").join("config.json")
}

/// The key docker files `registry` under (and passes to helpers).
fn config_key(registry: &str) -> String {
    let host = convert_to_hostname(registry.trim());
    if is_docker_hub(host) {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
}

/// Whether a key found in the file names the registry filed under `key`.
fn same_registry(name: &str, key: &str) -> bool {
    config_key(name).eq_ignore_ascii_case(key)
}

/// `host[:port]` of a registry address, as docker's `ConvertToHostname`: the
/// authority of a URL, or what comes before the first `/`.
fn convert_to_hostname(address: &str) -> &str {
    if let Some((_, rest)) = address.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        // An empty port is no port.
        let host = host.strip_suffix(':').unwrap_or(host);
        if !host.is_empty() {
            return host;
        }
    }
    address.split('/').next().unwrap_or_default()
}

fn helper_program(suffix: &str) -> String {
    format!("{HELPER_PREFIX}{suffix}")
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn spawn_helper(program: &Path, action: &str) -> io::Result<Child> {
    let mut attempt = 0;
    loop {
        let spawned = Command::new(program)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            // A helper written just now (an installer, a test) can still be
            // open for writing in a process forked meanwhile by another
            // thread; that passes as soon as the fork execs.
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5 * attempt));
            }
            other => return other,
        }
    }
}

struct HelperReply {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl HelperReply {
    fn says_not_found(&self) -> bool {
        [&self.stdout, &self.stderr].iter().any(|out| {
            String::from_utf8_lossy(out)
                .to_ascii_lowercase()
                .contains(NOT_FOUND_MESSAGE)
        })
    }

    fn failure(&self, helper: &str, action: &'static str, secret: Option<&str>) -> CredentialError {
        let stdout = String::from_utf8_lossy(&self.stdout);
        let stderr = String::from_utf8_lossy(&self.stderr);
        // docker reports stdout, where helpers put their errors; stderr
        // serves helpers that do not follow that.
        let text = [stdout.trim(), stderr.trim()]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("no output");
        let mut message = match secret {
            Some(secret) if !secret.is_empty() => text.replace(secret, "<redacted>"),
            _ => text.to_string(),
        };
        if message.len() > HELPER_MESSAGE_LIMIT {
            let mut end = HELPER_MESSAGE_LIMIT;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        CredentialError::HelperFailed {
            helper: helper_program(helper),
            action,
            status: self.status,
            message,
        }
    }
}

/// Replaces `path` (or, when it is a symlink, its target) with `bytes`, with
/// mode 0600, so that a crash or a concurrent reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let target = write_target(path);
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let previous = fs::metadata(&target).ok();
    let (temp_path, mut file) = create_temp(dir, &name.to_string_lossy())?;
    let written = (|| {
        file.write_all(bytes)?;
        // Regardless of the umask: the file holds passwords.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        if let Some(previous) = &previous {
            keep_owner(&temp_path, previous);
        }
        file.sync_all()?;
        fs::rename(&temp_path, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp_path);
        return written;
    }
    // Makes the rename itself durable; the file is complete either way.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Where to write: through a symlink (dotfile managers make config.json
/// one), not over it.
fn write_target(path: &Path) -> PathBuf {
    if let Ok(resolved) = fs::canonicalize(path) {
        return resolved;
    }
    match fs::read_link(path) {
        // A dangling link: its target is yet to be created.
        Ok(target) => match path.parent() {
            Some(parent) => parent.join(target),
            None => target,
        },
        Err(_) => path.to_owned(),
    }
}

fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, fs::File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            // Left behind by a crashed process that had our pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {}
            Err(e) => return Err(e),
        }
    }
}

/// Keeps the file owned by its user when rbuild runs as root (`sudo rbuild
/// login`), as docker does; failure just leaves it owned by us.
fn keep_owner(path: &Path, previous: &fs::Metadata) {
    let Ok(current) = fs::metadata(path) else {
        return;
    };
    if (current.uid(), current.gid()) != (previous.uid(), previous.gid()) {
        let _ = std::os::unix::fs::chown(path, Some(previous.uid()), Some(previous.gid()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper keeping credentials in files next to it, one per server URL,
    /// and logging each call's action and server URL (never the secret).
    const FAKE_HELPER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
input=$(cat)
case "$1" in
get|erase) url=$input ;;
store) url=$(printf '%s' "$input" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p') ;;
*) echo "unknown action $1"; exit 2 ;;
esac
printf '%s %s\n' "$1" "$url" >> "$dir/log"
mkdir -p "$dir/store"
file="$dir/store/$(printf '%s' "$url" | od -An -tx1 | tr -d ' \n')"
case "$1" in
get) if [ -f "$file" ]; then cat "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
store) printf '%s' "$input" > "$file" ;;
erase) if [ -f "$file" ]; then rm "$file"; else echo "credentials not found in native keychain"; exit 1; fi ;;
esac
"#;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }

        fn config(&self) -> PathBuf {
            self.dir.path().join("config.json")
        }

        fn bin(&self) -> PathBuf {
            self.dir.path().join("bin")
        }

        fn write_config(&self, json: &str) {
            fs::write(self.config(), json).expect("write config");
        }

        fn read_config(&self) -> Value {
            let bytes = fs::read(self.config()).expect("read config");
            serde_json::from_slice(&bytes).expect("config is JSON")
        }

        fn add_helper(&self, suffix: &str, script: &str) {
            let dir = self.bin().join(suffix);
            fs::create_dir_all(&dir).expect("helper dir");
            let program = dir.join(helper_program(suffix));
            fs::write(&program, script).expect("write helper");
            fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).expect("chmod");
        }

        fn helper_log(&self, suffix: &str) -> String {
            fs::read_to_string(self.bin().join(suffix).join("log")).unwrap_or_default()
        }

        fn open(&self) -> CredentialStore {
            let dirs = fs::read_dir(self.bin())
                .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_else(|_| Vec::new());
            let search = std::env::join_paths(dirs).expect("join paths");
            CredentialStore::open(&self.config())
                .expect("open")
                .with_helper_path(search)
        }
    }

    fn basic(username: &str, password: &str) -> Credential {
        Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }
    }

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn store_get_erase_round_trip() {
        let fx = Fixture::new();
        let mut store = fx.open();
        assert_eq!(store.get("registry.example:5000").unwrap(), None);

        store
            .store(
                "registry.example:5000",
                &basic("alice", "s3cret:with:colons"),
            )
            .unwrap();
        assert_eq!(
            fx.read_config()["auths"]["registry.example:5000"],
            serde_json::json!({ "auth": b64("alice:s3cret:with:colons") })
        );
        assert_eq!(
            fx.open().get("registry.example:5000").unwrap(),
            Some(basic("alice", "s3cret:with:colons"))
        );

        assert!(store.erase("registry.example:5000").unwrap());
        assert_eq!(store.get("registry.example:5000").unwrap(), None);
        assert_eq!(fx.read_config()["auths"], serde_json::json!({}));
        assert!(!store.erase("registry.example:5000").unwrap());
    }

    #[test]
    fn missing_or_empty_file_has_no_credentials() {
        let fx = Fixture::new();
        assert_eq!(fx.open().get("docker.io").unwrap(), None);
        fx.write_config("  \n");
        assert_eq!(fx.open().get("docker.io").unwrap(), None);
    }

    #[test]
    fn docker_written_file_keeps_everything_else() {
        let fx = Fixture::new();
        let original = format!(
            "{{\n\t\"auths\": {{\n\t\t\"https://index.docker.io/v1/\": {{\n\t\t\t\"auth\": \"{}\"\n\t\t}}\n\t}},\n\
             \t\"HttpHeaders\": {{\n\t\t\"X-Meta\": \"1\"\n\t}},\n\
             \t\"psFormat\": \"table {{{{.ID}}}}\",\n\
             \t\"currentContext\": \"remote\",\n\
             \t\"proxies\": {{\n\t\t\"default\": {{\n\t\t\t\"httpProxy\": \"http://proxy:3128\",\n\t\t\t\"noProxy\": \"localhost\"\n\t\t}}\n\t}},\n\
             \t\"plugins\": {{\n\t\t\"buildx\": {{\n\t\t\t\"x\": \"y\"\n\t\t}}\n\t}},\n\
             \t\"featureFromTheFuture\": [1, 2.5, null, true]\n}}",
            b64("hubuser:hubpass")
        );
        fx.write_config(&original);
        let before: Value = serde_json::from_str(&original).unwrap();

        let mut store = fx.open();
        assert_eq!(
            store.get("docker.io").unwrap(),
            Some(basic("hubuser", "hubpass"))
        );
        store.store("ghcr.io", &basic("bob", "pat")).unwrap();

        let after = fx.read_config();
        let (Value::Object(before), Value::Object(after)) = (&before, &after) else {
            panic!("not objects");
        };
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "top-level order kept"
        );
        for (k, v) in before {
            if k != "auths" {
                assert_eq!(&after[k], v, "{k} kept");
            }
        }
        assert_eq!(
            after["auths"],
            serde_json::json!({
                "https://index.docker.io/v1/": { "auth": b64("hubuser:hubpass") },
                "ghcr.io": { "auth": b64("bob:pat") },
            })
        );
        let text = fs::read_to_string(fx.config()).unwrap();
        assert!(
            text.starts_with("{\n\t\"auths\""),
            "tab-indented like docker"
        );
    }

    #[test]
    fn docker_hub_aliases() {
        let fx = Fixture::new();
        let mut store = fx.open();
        store.store("docker.io", &basic("u", "p")).unwrap();
        assert_eq!(
            fx.read_config()["auths"],
            serde_json::json!({ DOCKER_HUB_KEY: { "auth": b64("u:p") } })
        );
        let store = fx.open();
        for name in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "https://index.docker.io/v1/",
            "https://registry-1.docker.io/v2/",
        ] {
            assert_eq!(store.get(name).unwrap(), Some(basic("u", "p")), "{name}");
        }
        assert_eq!(store.get("quay.io").unwrap(), None);

        // Other tools file Docker Hub under its plain name.
        fx.write_config(&format!(
            r#"{{"auths": {{"docker.io": {{"auth": "{}"}}}}}}"#,
            b64("other:tool")
        ));
        assert_eq!(
            fx.open().get("registry-1.docker.io").unwrap(),
            Some(basic("other", "tool"))
        );
    }

    #[test]
    fn url_shaped_keys() {
        let fx = Fixture::new();
        fx.write_config(&format!(
            r#"{{"auths": {{
                "http://plain.example:5000": {{"auth": "{}"}},
                "https://secure.example/v2/": {{"auth": "{}"}},
                "https://both.example": {{"auth": "{}"}},
                "both.example": {{"auth": "{}"}}
            }}}}"#,
            b64("p:1"),
            b64("s:2"),
            b64("url:3"),
            b64("host:4")
        ));
        let mut store = fx.open();
        assert_eq!(
            store.get("plain.example:5000").unwrap(),
            Some(basic("p", "1"))
        );
        assert_eq!(
            store.get("plain.example").unwrap(),
            None,
            "the port matters"
        );
        assert_eq!(store.get("secure.example").unwrap(), Some(basic("s", "2")));
        assert_eq!(
            store.get("both.example").unwrap(),
            Some(basic("host", "4")),
            "docker's own key first"
        );

        assert!(store.erase("both.example").unwrap());
        let auths = &fx.read_config()["auths"];
        assert!(auths.get("both.example").is_none());
        assert!(
            auths.get("https://both.example").is_none(),
            "every spelling erased"
        );
        assert!(auths.get("http://plain.example:5000").is_some());
    }

    #[test]
    fn username_and_password_fields() {
        let fx = Fixture::new();
        fx.write_config(
            r#"{"auths": {"a.example": {"username": "u", "password": "p"},
                          "b.example": {"auth": "", "username": "v", "password": "q"},
                          "c.example": {},
                          "d.example": null}}"#,
        );
        let store = fx.open();
        assert_eq!(store.get("a.example").unwrap(), Some(basic("u", "p")));
        assert_eq!(store.get("b.example").unwrap(), Some(basic("v", "q")));
        assert_eq!(store.get("c.example").unwrap(), None);
        assert_eq!(store.get("d.example").unwrap(), None);
    }

    #[test]
    fn identity_tokens() {
        let fx = Fixture::new();
        fx.write_config(&format!(
            r#"{{"auths": {{
                "a.example": {{"auth": "{}", "identitytoken": "refresh-a"}},
                "b.example": {{"identitytoken": "refresh-b"}}
            }}}}"#,
            b64("alice:")
        ));
        let mut store = fx.open();
        let a = Credential::IdentityToken {
            username: "alice".to_string(),
            token: "refresh-a".to_string(),
        };
        assert_eq!(store.get("a.example").unwrap(), Some(a.clone()));
        assert_eq!(
            store.get("b.example").unwrap(),
            Some(Credential::IdentityToken {
                username: String::new(),
                token: "refresh-b".to_string()
            })
        );

        store.store("c.example", &a).unwrap();
        assert_eq!(
            fx.read_config()["auths"]["c.example"],
            serde_json::json!({ "auth": b64("alice:"), "identitytoken": "refresh-a" })
        );
        assert_eq!(fx.open().get("c.example").unwrap(), Some(a));
    }

    #[test]
    fn cred_helpers_get_store_erase() {
        let fx = Fixture::new();
        fx.add_helper("fake", FAKE_HELPER);
        fx.write_config(r#"{"credHelpers": {"helped.example:5000": "fake"}, "auths": {}}"#);
        let mut store = fx.open();

        assert_eq!(store.get("helped.example:5000").unwrap(), None);
        store
            .store("helped.example:5000", &basic("carol", "pw"))
            .unwrap();
        assert_eq!(
            fx.read_config()["auths"],
            serde_json::json!({ "helped.example:5000": {} }),
            "only a marker in the file"
        );
        assert!(!fs::read_to_string(fx.config()).unwrap().contains("pw"));
        assert_eq!(
            fx.open().get("helped.example:5000").unwrap(),
            Some(basic("carol", "pw"))
        );
        assert_eq!(
            store.get("https://helped.example:5000/v2/").unwrap(),
            Some(basic("carol", "pw"))
        );

        // Registries without a helper still use the file.
        store.store("plain.example", &basic("d", "e")).unwrap();
        assert_eq!(
            fx.read_config()["auths"]["plain.example"],
            serde_json::json!({ "auth": b64("d:e") })
        );

        assert!(store.erase("helped.example:5000").unwrap());
        assert_eq!(store.get("helped.example:5000").unwrap(), None);
        assert!(
            fx.read_config()["auths"]
                .get("helped.example:5000")
                .is_none()
        );
        assert!(!store.erase("helped.example:5000").unwrap());

        assert_eq!(
            fx.helper_log("fake"),
            "get helped.example:5000\nstore helped.example:5000\nget helped.example:5000\n\
             get helped.example:5000\nerase helped.example:5000\nget helped.example:5000\n\
             erase helped.example:5000\n"
        );
    }

    #[test]
    fn creds_store_for_docker_hub() {
        let fx = Fixture::new();
        fx.add_helper("fake", FAKE_HELPER);
        fx.write_config(r#"{"credsStore": "fake"}"#);
        let mut store = fx.open();
        let token = Credential::IdentityToken {
            username: "dave".to_string(),
            token: "refresh".to_string(),
        };
        store.store("docker.io", &token).unwrap();
        assert_eq!(
            fx.read_config(),
            serde_json::json!({ "credsStore": "fake", "auths": { DOCKER_HUB_KEY: {} } })
        );
        // Helpers keep no username with a token.
        assert_eq!(
            fx.open().get("registry-1.docker.io").unwrap(),
            Some(Credential::IdentityToken {
                username: String::new(),
                token: "refresh".to_string()
            })
        );
        assert!(store.erase("index.docker.io").unwrap());
        assert_eq!(store.get("docker.io").unwrap(), None);
        assert_eq!(
            fx.helper_log("fake"),
            format!(
                "store {DOCKER_HUB_KEY}\nget {DOCKER_HUB_KEY}\nerase {DOCKER_HUB_KEY}\nget {DOCKER_HUB_KEY}\n"
            )
        );
    }

    #[test]
    fn helper_precedence() {
        let fx = Fixture::new();
        fx.add_helper("fake", FAKE_HELPER);
        fx.add_helper("other", FAKE_HELPER);
        fx.write_config(&format!(
            r#"{{"credsStore": "fake",
                "credHelpers": {{"c.example": "other", "b.example": ""}},
                "auths": {{"a.example": {{"auth": "{0}"}}, "b.example": {{"auth": "{0}"}}}}}}"#,
            b64("file:pw")
        ));
        let mut store = fx.open();
        // With a store configured, a plain-text entry is not consulted.
        assert_eq!(store.get("a.example").unwrap(), None);
        // An empty credHelpers entry means the file, not credsStore.
        assert_eq!(store.get("b.example").unwrap(), Some(basic("file", "pw")));
        store.store("c.example", &basic("h", "x")).unwrap();
        assert_eq!(store.get("c.example").unwrap(), Some(basic("h", "x")));
        assert_eq!(fx.helper_log("fake"), "get a.example\n");
        assert_eq!(fx.helper_log("other"), "store c.example\nget c.example\n");
    }

    #[test]
    fn helper_failures() {
        let fx = Fixture::new();
        fx.add_helper(
            "quiet",
            "#!/bin/sh\ncat >/dev/null\necho 'Credentials not found' >&2\nexit 1\n",
        );
        fx.add_helper(
            "broken",
            "#!/bin/sh\ninput=$(cat)\necho \"keychain locked; got $input\"\nexit 3\n",
        );
        fx.add_helper("garbled", "#!/bin/sh\ncat >/dev/null\necho 'not json'\n");
        fx.write_config(
            r#"{"credHelpers": {"q.example": "quiet", "b.example": "broken",
                                "g.example": "garbled", "m.example": "missing",
                                "e.example": "../escape"}}"#,
        );
        let mut store = fx.open();
        assert_eq!(store.get("q.example").unwrap(), None, "not found on stderr");

        let err = store.get("m.example").unwrap_err();
        assert!(matches!(err, CredentialError::HelperNotFound { .. }));
        assert!(
            err.to_string().contains("docker-credential-missing"),
            "{err}"
        );
        assert!(err.to_string().contains("config.json"), "{err}");
        assert!(matches!(
            store.get("e.example").unwrap_err(),
            CredentialError::HelperNotFound { .. }
        ));

        let err = store.get("g.example").unwrap_err();
        assert!(matches!(err, CredentialError::HelperReply { .. }), "{err}");

        let err = store
            .store("b.example", &basic("user", "hunter2"))
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("docker-credential-broken store"),
            "{message}"
        );
        assert!(message.contains("keychain locked"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            fx.read_config().get("auths").is_none(),
            "nothing recorded when the helper fails"
        );
    }

    #[test]
    fn malformed_files() {
        let fx = Fixture::new();
        for (json, expect) in [
            (r#"{"auths": {"#, "EOF"),
            (r#"{"auths": [] }"#, "`auths` is not an object"),
            (r#"[1]"#, "not a JSON object"),
            (
                r#"{"auths": {"x": "c2VjcmV0"}}"#,
                "`auths.x` is not an object",
            ),
            (
                r#"{"auths": {"x": {"auth": 5}}}"#,
                "`auths.x.auth` is not a string",
            ),
            (
                r#"{"credHelpers": {"x": 1}}"#,
                "`credHelpers.x` is not a string",
            ),
            (r#"{"credsStore": {}}"#, "`credsStore` is not a string"),
        ] {
            fx.write_config(json);
            let err = CredentialStore::open(&fx.config()).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, CredentialError::Malformed { .. }),
                "{json}: {err:?}"
            );
            assert!(
                message.contains(&*fx.config().to_string_lossy()),
                "{message}"
            );
            assert!(message.contains(expect), "{json}: {message}");
            assert!(!message.contains("c2VjcmV0"), "{message}");
        }
    }

    #[test]
    fn malformed_auth() {
        let fx = Fixture::new();
        for auth in ["!!!not base64!!!", &b64("no-colon-secret"), &b64(":nouser")] {
            fx.write_config(&format!(
                r#"{{"auths": {{"bad.example": {{"auth": "{auth}"}}, "good.example": {{"auth": "{}"}}}}}}"#,
                b64("g:h")
            ));
            let store = fx.open();
            let err = store.get("bad.example").unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, CredentialError::MalformedAuth { .. }),
                "{err:?}"
            );
            assert!(
                message.contains(&*fx.config().to_string_lossy()),
                "{message}"
            );
            assert!(message.contains("bad.example"), "{message}");
            assert!(
                !message.contains("secret") && !message.contains(auth),
                "{message}"
            );
            // A bad entry does not spoil the others.
            assert_eq!(store.get("good.example").unwrap(), Some(basic("g", "h")));
        }
    }

    #[test]
    fn lenient_auth_decoding() {
        assert_eq!(
            decode_auth(&format!("{}\n", b64("u:p").trim_end_matches('='))),
            Some(("u".to_string(), "p".to_string()))
        );
        assert_eq!(
            decode_auth(&b64("u:p\0\0")),
            Some(("u".to_string(), "p".to_string()))
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!(
            "{:?} {:?}",
            basic("alice", "hunter2"),
            Credential::IdentityToken {
                username: "bob".to_string(),
                token: "refresh-xyz".to_string()
            }
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("refresh-xyz"),
            "{shown}"
        );
        assert!(
            shown.contains("alice") && shown.contains("<redacted>"),
            "{shown}"
        );

        let fx = Fixture::new();
        fx.write_config(&format!(
            r#"{{"auths": {{"a": {{"auth": "{}"}}}}}}"#,
            b64("a:hunter2")
        ));
        let shown = format!("{:?}", fx.open());
        assert!(!shown.contains(&b64("a:hunter2")), "{shown}");
    }

    #[test]
    fn written_file_is_private() {
        let fx = Fixture::new();
        fx.write_config("{}");
        fs::set_permissions(fx.config(), fs::Permissions::from_mode(0o644)).unwrap();
        fx.open().store("a.example", &basic("u", "p")).unwrap();
        let mode = fs::metadata(fx.config()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let nested = fx.dir.path().join("new/.docker/config.json");
        let mut store = CredentialStore::open(&nested).unwrap();
        store.store("a.example", &basic("u", "p")).unwrap();
        let mode = fs::metadata(&nested).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = fs::read_dir(nested.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "config.json")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn writes_through_symlinks() {
        let fx = Fixture::new();
        let real = fx.dir.path().join("dotfiles/docker.json");
        fs::create_dir_all(real.parent().unwrap()).unwrap();
        fs::write(&real, r#"{"currentContext": "x"}"#).unwrap();
        std::os::unix::fs::symlink(&real, fx.config()).unwrap();
        fx.open().store("a.example", &basic("u", "p")).unwrap();
        assert!(
            fs::symlink_metadata(fx.config())
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let written: Value = serde_json::from_slice(&fs::read(&real).unwrap()).unwrap();
        assert_eq!(written["currentContext"], "x");
        assert_eq!(written["auths"]["a.example"]["auth"], b64("u:p"));
    }

    #[test]
    fn default_path_rules() {
        assert_eq!(
            config_path(Some("/cfg".into()), Some("/home/u".into())),
            Path::new("/cfg/config.json")
        );
        assert_eq!(
            config_path(Some("".into()), Some("/home/u".into())),
            Path::new("/home/u/.docker/config.json")
        );
        assert_eq!(
            config_path(None, Some("/home/u".into())),
            Path::new("/home/u/.docker/config.json")
        );
    }

    #[test]
    fn hostname_conversion() {
        for (address, host) in [
            ("registry.example", "registry.example"),
            ("registry.example:5000", "registry.example:5000"),
            ("registry.example:5000/v2/", "registry.example:5000"),
            ("http://registry.example:5000", "registry.example:5000"),
            ("https://registry.example/v2/", "registry.example"),
            (
                "https://user@registry.example:443/x?y#z",
                "registry.example:443",
            ),
            ("https://index.docker.io/v1/", "index.docker.io"),
        ] {
            assert_eq!(convert_to_hostname(address), host, "{address}");
        }
        assert_eq!(config_key("DOCKER.IO"), DOCKER_HUB_KEY);
        assert_eq!(config_key("localhost:5000"), "localhost:5000");
    }
}
