//! API tokens (issue 11), kept alike by both backends in `api_tokens`
//! (migration 003). Only the SHA-256 of a token is stored.

use super::StoreError;
use crate::domain::access::Role;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// One stored token. `Debug` leaves the hash out, so a row can never put it
/// into a log line.
#[derive(Clone, PartialEq)]
pub struct TokenRow {
    pub name: String,
    pub role: Role,
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRow")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .field("last_used_at", &self.last_used_at)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new token; false (and nothing written) when the name is taken.
    async fn create_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.insert_token(&TokenRow {
            name: name.to_string(),
            role,
            token_hash: token_hash.to_string(),
            created_at: now,
            last_used_at: None,
        })
        .await
    }
    /// Writes `row` (never used yet) unless its name is taken: the backend's
    /// half of `create_token`.
    async fn insert_token(&self, row: &TokenRow) -> Result<bool, StoreError>;
    /// Every token, by name.
    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
    /// Deletes the token; false when there was none by that name.
    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError>;
    /// Records when tokens were last used (batched by the HTTP edge).
    async fn touch_tokens(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError>;
}

/// A role as stored; the table's CHECK keeps anything else out.
pub(super) fn parse_role(s: &str) -> Result<Role, StoreError> {
    s.parse().map_err(|e: String| {
        StoreError::new(
            crate::domain::error::Class::Permanent,
            format!("api_tokens.role: {e}"),
        )
    })
}
