//! Bearer tokens, kept apart by role: tokens that may send OTLP (`--ingest-token-file`) and
//! tokens that may read (`--query-token-file`: query API, UI, `/metrics`).
//!
//! A token file holds one token per line; blank lines and lines starting with `#` are
//! ignored. Files are read at start and again on [`Auth::reload`] (SIGHUP), so a token can be
//! revoked without a restart; a file that cannot be read on reload keeps the tokens in force
//! and says why. Tokens are compared in constant time (SHA-256 digests compared with `subtle`,
//! every token every time) and never appear in logs, metrics or answers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who a token lets in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Query,
}

impl Role {
    fn flag(self) -> &'static str {
        match self {
            Role::Ingest => "--ingest-token-file",
            Role::Query => "--query-token-file",
        }
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{flag} {path}: {source}")]
    Read { flag: &'static str, path: String, source: std::io::Error },
    #[error("{flag} {path} holds no token (one per line; lines starting with # are comments)")]
    Empty { flag: &'static str, path: String },
}

/// The digests of one role's tokens, and the file they come from.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    digests: RwLock<Vec<[u8; 32]>>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

fn read_tokens(role: Role, path: &Path) -> Result<Vec<[u8; 32]>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        flag: role.flag(),
        path: path.display().to_string(),
        source,
    })?;
    let digests: Vec<[u8; 32]> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| digest(l.as_bytes()))
        .collect();
    if digests.is_empty() {
        return Err(AuthError::Empty { flag: role.flag(), path: path.display().to_string() });
    }
    Ok(digests)
}

/// The tokens of both roles. Cloning shares them; a role without a file lets everyone in.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    ingest: Option<Arc<TokenFile>>,
    query: Option<Arc<TokenFile>>,
}

impl Auth {
    /// Reads the token files (either may be absent).
    pub fn load(ingest: Option<&Path>, query: Option<&Path>) -> Result<Auth, AuthError> {
        let load = |role, path: Option<&Path>| -> Result<Option<Arc<TokenFile>>, AuthError> {
            path.map(|p| {
                Ok(Arc::new(TokenFile { path: p.to_owned(), digests: RwLock::new(read_tokens(role, p)?) }))
            })
            .transpose()
        };
        Ok(Auth { ingest: load(Role::Ingest, ingest)?, query: load(Role::Query, query)? })
    }

    /// Whether `role` requires a token.
    pub fn required(&self, role: Role) -> bool {
        self.file(role).is_some()
    }

    fn file(&self, role: Role) -> Option<&Arc<TokenFile>> {
        match role {
            Role::Ingest => self.ingest.as_ref(),
            Role::Query => self.query.as_ref(),
        }
    }

    /// Whether `token` may act as `role` (always, when the role has no token file).
    pub fn allows(&self, role: Role, token: Option<&str>) -> bool {
        let Some(file) = self.file(role) else { return true };
        let Some(token) = token else { return false };
        let presented = digest(token.as_bytes());
        let digests = file.digests.read().expect("token lock");
        // Every token is compared, whatever matched, so the time says nothing about which.
        let mut found = subtle::Choice::from(0u8);
        for d in digests.iter() {
            found |= d.ct_eq(&presented);
        }
        found.into()
    }

    /// The token of an `Authorization: Bearer <token>` header value.
    pub fn bearer(header: Option<&str>) -> Option<&str> {
        let value = header?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
    }

    /// Re-reads both files. A file that cannot be read keeps its tokens in force; the errors
    /// are returned (they name the file, never a token).
    pub fn reload(&self) -> Vec<AuthError> {
        let mut errors = Vec::new();
        for role in [Role::Ingest, Role::Query] {
            if let Some(file) = self.file(role) {
                match read_tokens(role, &file.path) {
                    Ok(digests) => *file.digests.write().expect("token lock") = digests,
                    Err(e) => errors.push(e),
                }
            }
        }
        errors
    }

    /// How many tokens each role has, for the log line after a reload.
    pub fn counts(&self) -> (Option<usize>, Option<usize>) {
        let n = |f: Option<&Arc<TokenFile>>| f.map(|f| f.digests.read().expect("token lock").len());
        (n(self.ingest.as_ref()), n(self.query.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_comments_bearer_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# team tokens\n\n  alpha  \nbeta\n").unwrap();
        let auth = Auth::load(Some(&path), None).unwrap();
        assert!(auth.required(Role::Ingest) && !auth.required(Role::Query));
        assert!(auth.allows(Role::Ingest, Some("alpha")));
        assert!(auth.allows(Role::Ingest, Some("beta")));
        assert!(!auth.allows(Role::Ingest, Some("alph")));
        assert!(!auth.allows(Role::Ingest, Some("# team tokens")));
        assert!(!auth.allows(Role::Ingest, None));
        assert!(auth.allows(Role::Query, None), "a role without a file is open");
        assert_eq!(Auth::bearer(Some("Bearer alpha")), Some("alpha"));
        assert_eq!(Auth::bearer(Some("bearer  alpha ")), Some("alpha"));
        assert_eq!(Auth::bearer(Some("Basic alpha")), None);
        assert_eq!(Auth::bearer(Some("Bearer ")), None);
        // Revoke alpha, add gamma.
        std::fs::write(&path, "beta\ngamma\n").unwrap();
        assert!(auth.reload().is_empty());
        assert!(!auth.allows(Role::Ingest, Some("alpha")));
        assert!(auth.allows(Role::Ingest, Some("gamma")));
        // A file that became unreadable keeps the tokens in force, and the error names the
        // file, not a token.
        std::fs::remove_file(&path).unwrap();
        let errors = auth.reload();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("--ingest-token-file "), "{}", errors[0]);
        assert!(auth.allows(Role::Ingest, Some("gamma")));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(matches!(Auth::load(Some(&path), None), Err(AuthError::Empty { .. })));
    }
}
