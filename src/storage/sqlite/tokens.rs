//! `TokenStore` on SQLite: reads on the reader pool, writes through the writer thread.

use super::super::tokens::{parse_role, TokenRow, TokenStore};
use super::*;
use async_trait::async_trait;

#[async_trait]
impl TokenStore for SqliteStore {
    async fn insert_token(&self, row: &TokenRow) -> Result<bool, StoreError> {
        let row = row.clone();
        self.write(move |c| {
            c.execute(
                "insert into api_tokens (name, role, token_hash, created_at) values (?1, ?2, ?3, ?4) \
                 on conflict (name) do nothing",
                params![row.name, row.role.as_str(), row.token_hash, ts(row.created_at)],
            )
            .map(|n| n == 1)
            .map_err(sql_err)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "select name, role, token_hash, created_at, last_used_at from api_tokens order by name",
                )
                .map_err(sql_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        parse_ts(&r.get::<_, String>(3)?)?,
                        opt_ts(r.get(4)?)?,
                    ))
                })
                .map_err(sql_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (name, role, token_hash, created_at, last_used_at) = row.map_err(sql_err)?;
                out.push(TokenRow {
                    name,
                    role: parse_role(&role)?,
                    token_hash,
                    created_at,
                    last_used_at,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute("delete from api_tokens where name = ?1", params![name])
                .map(|n| n > 0)
                .map_err(sql_err)
        })
        .await
    }

    async fn touch_tokens(&self, used: &[(String, DateTime<Utc>)]) -> Result<(), StoreError> {
        let used = used.to_vec();
        self.write(move |c| {
            for (name, at) in &used {
                c.execute(
                    "update api_tokens set last_used_at = ?1 where name = ?2",
                    params![ts(*at), name],
                )
                .map_err(sql_err)?;
            }
            Ok(())
        })
        .await
    }
}
