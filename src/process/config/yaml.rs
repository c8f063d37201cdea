//! The spec's `config.yaml`, read as a figment provider with the same keys as the TOML file.

use figment::providers::Serialized;
use std::path::PathBuf;

/// A YAML config file (the spec's `config.yaml`) as a figment provider.
pub(super) struct YamlFile(pub(super) PathBuf);

impl figment::Provider for YamlFile {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("YAML file").source(self.0.as_path())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| format!("reading {}: {e}", self.0.display()))?;
        let docs = yaml_rust2::YamlLoader::load_from_str(&text)
            .map_err(|e| format!("{}: {e}", self.0.display()))?;
        let value = match docs.first() {
            Some(doc) => yaml_to_json(doc)?,
            None => serde_json::Value::Object(Default::default()),
        };
        Serialized::defaults(value).data()
    }
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .map(Value::from)
            .map_err(|_| format!("not a number: {r}"))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported YAML key {other:?}")),
                };
                m.insert(key, yaml_to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err("unsupported YAML value".into()),
    })
}
