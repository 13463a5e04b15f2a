//! `hutch secret set [-g|NAME] SERVICE | ls [NAME] | rm [-g|NAME] SERVICE`.
//! Values come from stdin or a no-echo prompt, never from argv, and are
//! never printed.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

use super::{split_scope, AdminError};
use crate::credential::{check_secret, Service};
use crate::scope::Scope;
use crate::secrets::Secrets;

fn service_arg(global: bool, args: &[String]) -> Result<(Scope, Service), AdminError> {
    let (scope, rest) = split_scope(global, args, "SERVICE")?;
    match rest.as_slice() {
        [s] => Ok((
            scope,
            s.parse().map_err(|e| AdminError::Usage(format!("{e}")))?,
        )),
        // The arguments are not echoed: a value typed there by mistake stays unprinted.
        _ => Err(AdminError::Usage(format!(
            "expected one SERVICE, got {} arguments (the secret itself is read from stdin, never from the command line)",
            rest.len()
        ))),
    }
}

fn describe(service: &Service) -> String {
    service.hosts().join(", ")
}

/// `secret set`: checks the arguments, then asks `read_value` for the
/// secret (so nothing is read when the arguments are wrong), then stores it.
pub fn set(
    path: &Path,
    global: bool,
    args: &[String],
    read_value: impl FnOnce(&Service) -> std::io::Result<String>,
) -> Result<String, AdminError> {
    let (scope, service) = service_arg(global, args)?;
    let mut secrets = Secrets::load(path).map_err(AdminError::failed)?;
    let raw = read_value(&service)
        .map_err(|e| AdminError::Failed(format!("cannot read the secret: {e}")))?;
    let value = check_secret(&service, &raw).map_err(|e| AdminError::Usage(e.to_string()))?;
    secrets.set(scope.clone(), service.clone(), value);
    secrets.save(path).map_err(AdminError::failed)?;
    Ok(format!(
        "{scope}: {service} stored (sent to {})\n",
        describe(&service)
    ))
}

/// `secret ls [NAME]`: scopes and services, never values.
pub fn ls(path: &Path, name: Option<&str>) -> Result<String, AdminError> {
    let secrets = Secrets::load(path).map_err(AdminError::failed)?;
    let mut out = String::new();
    for (scope, service) in secrets.list() {
        if let (Some(n), Scope::Sandbox(s)) = (name, &scope) {
            if n != s {
                continue;
            }
        }
        out.push_str(&format!(
            "{:<20} {:<32} {}\n",
            scope.to_string(),
            service.to_string(),
            describe(service)
        ));
    }
    if out.is_empty() {
        out.push_str("(no secrets)\n");
    }
    Ok(out)
}

/// `secret rm [-g|NAME] SERVICE`.
pub fn rm(path: &Path, global: bool, args: &[String]) -> Result<String, AdminError> {
    let (scope, service) = service_arg(global, args)?;
    let mut secrets = Secrets::load(path).map_err(AdminError::failed)?;
    if !secrets.remove(&scope, &service) {
        return Err(AdminError::Failed(format!(
            "no {service} secret in {scope}"
        )));
    }
    secrets.save(path).map_err(AdminError::failed)?;
    Ok(format!("{scope}: {service} removed\n"))
}

/// Reads a secret: from a terminal with a prompt and echo off, else all
/// of stdin.
pub fn read_value(service: &Service) -> std::io::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut s = String::new();
        stdin.lock().read_to_string(&mut s)?;
        return Ok(s);
    }
    eprint!("secret for {service} (input hidden): ");
    std::io::stderr().flush()?;
    let _echo = EchoOff::new();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    eprintln!();
    Ok(line)
}

/// Terminal echo off on stdin until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: termios is plain data; zeroed is a valid value to be filled.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid termios pointer.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return EchoOff(None);
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        // SAFETY: fd 0 and a valid termios value.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return EchoOff(None);
        }
        EchoOff(Some(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read from fd 0 in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn set_ls_rm_never_show_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secrets.toml");
        let out = set(&p, true, &v(&["anthropic"]), |_| Ok("sk-ant-123\n".into())).unwrap();
        assert_eq!(
            out,
            "global: anthropic stored (sent to api.anthropic.com)\n"
        );
        set(&p, false, &v(&["web", "github"]), |_| Ok("ghp_abc".into())).unwrap();
        let listing = ls(&p, None).unwrap();
        assert!(
            listing.contains("global")
                && listing.contains("sandbox web")
                && listing.contains("api.github.com, github.com"),
            "{listing}"
        );
        assert!(
            !listing.contains("sk-ant") && !listing.contains("ghp_"),
            "{listing}"
        );
        let file = std::fs::read_to_string(&p).unwrap();
        assert!(
            file.contains("anthropic = \"sk-ant-123\""),
            "newline trimmed: {file}"
        );
        let creds = Secrets::load(&p).unwrap().credentials_for("web");
        assert_eq!(creds.iter().count(), 3);
        assert_eq!(
            rm(&p, false, &v(&["web", "github"])).unwrap(),
            "sandbox web: github removed\n"
        );
        assert_eq!(
            rm(&p, false, &v(&["web", "github"]))
                .unwrap_err()
                .exit_code(),
            125
        );
        assert!(!ls(&p, Some("web")).unwrap().contains("github"));
    }

    #[test]
    fn bad_arguments_are_refused_before_reading_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secrets.toml");
        let never = |_: &Service| -> std::io::Result<String> { panic!("read the value") };
        assert_eq!(
            set(&p, true, &v(&["gitlab"]), never)
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            set(&p, false, &v(&["anthropic"]), never)
                .unwrap_err()
                .exit_code(),
            2
        );
        let err = set(&p, true, &v(&["anthropic", "sk-typed-here"]), never).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(!err.to_string().contains("sk-typed-here"), "{err}");
        let err = set(&p, true, &v(&["openai"]), |_| Ok("two\nlines".into())).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(!p.exists());
    }
}
