//! `TokenStore` on PostgreSQL.

use super::super::tokens::{parse_role, TokenRow, TokenStore};
use super::*;
use async_trait::async_trait;

#[async_trait]
impl TokenStore for PgStore {
    async fn insert_token(&self, row: &TokenRow) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "insert into api_tokens (name, role, token_hash, created_at) values ($1, $2, $3, $4) \
                 on conflict (name) do nothing",
                &[&row.name, &row.role.as_str(), &row.token_hash, &row.created_at],
            )
            .await
            .map_err(pg_err)?;
        Ok(n == 1)
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "select name, role, token_hash, created_at, last_used_at from api_tokens order by name",
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(TokenRow {
                    name: r.try_get(0).map_err(pg_err)?,
                    role: parse_role(r.try_get::<_, &str>(1).map_err(pg_err)?)?,
                    token_hash: r.try_get(2).map_err(pg_err)?,
                    created_at: r.try_get(3).map_err(pg_err)?,
                    last_used_at: r.try_get(4).map_err(pg_err)?,
                })
            })
            .collect()
    }

    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute("delete from api_tokens where name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        Ok(n > 0)
    }

    async fn touch_tokens(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = used.iter().map(|(n, _)| n.as_str()).collect();
        let times: Vec<DateTime<Utc>> = used.iter().map(|(_, t)| *t).collect();
        let c = self.client().await?;
        c.execute(
            "update api_tokens t set last_used_at = u.at \
             from unnest($1::text[], $2::timestamptz[]) as u(name, at) where t.name = u.name",
            &[&names, &times],
        )
        .await
        .map_err(pg_err)?;
        Ok(())
    }
}
