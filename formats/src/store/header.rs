//! The root group's attributes: what a store was written for, and the check that a writer
//! agrees with it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::check_geometry;
use super::{Result, StoreError, StoreHeader};
use crate::encoding::Encoding;
use crate::hash::Hash32;
use crate::teacher::TeacherGeometry;
use crate::view::ViewRecipe;

/// Key of the tinymim record in the root group's attributes.
pub(crate) const ROOT_ATTRIBUTE: &str = "tinymim";
/// Value of the `format` field.
const FORMAT: &str = "tinymim.relations";
/// The layout version this code reads and writes.
const VERSION: u32 = 1;

/// The tinymim record in the root group's attributes, as stored.
#[derive(Serialize, Deserialize)]
pub(crate) struct RootAttributes {
    format: String,
    version: u32,
    teacher: TeacherRecord,
    encoding: Encoding,
    dtype: String,
    view_recipe: ViewRecipe,
}

/// The teacher part of [`RootAttributes`].
#[derive(Serialize, Deserialize)]
struct TeacherRecord {
    fingerprint: Hash32,
    geometry: TeacherGeometry,
}

impl RootAttributes {
    /// The record of a header.
    pub(crate) fn of(header: &StoreHeader) -> Self {
        RootAttributes {
            format: FORMAT.to_string(),
            version: VERSION,
            teacher: TeacherRecord {
                fingerprint: header.teacher,
                geometry: header.geometry.clone(),
            },
            encoding: header.encoding,
            dtype: header.encoding.dtype().to_string(),
            view_recipe: header.recipe.clone(),
        }
    }

    /// Parses the record out of the root attributes; `Err(reason)` for anything that is not a
    /// version-1 tinymim record with a usable geometry.
    pub(crate) fn parse(
        attributes: &serde_json::Map<String, Value>,
    ) -> Result<StoreHeader, String> {
        let record = attributes
            .get(ROOT_ATTRIBUTE)
            .ok_or_else(|| format!("the root group has no `{ROOT_ATTRIBUTE}` attribute"))?;
        let format = record.get("format").and_then(Value::as_str);
        if format != Some(FORMAT) {
            return Err(format!(
                "attribute `{ROOT_ATTRIBUTE}.format` is {format:?}, expected \"{FORMAT}\""
            ));
        }
        let record: RootAttributes = serde_json::from_value(record.clone())
            .map_err(|e| format!("attribute `{ROOT_ATTRIBUTE}`: {e}"))?;
        if record.version != VERSION {
            return Err(format!(
                "layout version {} is not supported (this build reads version {VERSION})",
                record.version
            ));
        }
        // The dtype follows from the encoding (float16, not bfloat16, which zarr-python 3
        // cannot open; int8 for `ln1-int8`).
        let dtype = record.encoding.dtype();
        if record.dtype != dtype {
            return Err(format!(
                "target dtype `{}` is not supported for the `{}` encoding (expected {dtype})",
                record.dtype, record.encoding
            ));
        }
        check_geometry(&record.teacher.geometry).map_err(|e| e.to_string())?;
        Ok(StoreHeader {
            teacher: record.teacher.fingerprint,
            geometry: record.teacher.geometry,
            encoding: record.encoding,
            recipe: record.view_recipe,
        })
    }

    /// The record as a JSON attribute map.
    pub(crate) fn to_attributes(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        map.insert(
            ROOT_ATTRIBUTE.to_string(),
            serde_json::to_value(self).expect("the record serialises"),
        );
        map
    }
}

/// Refuses a writer whose header differs from the store's: the error names the first
/// differing field (down to a geometry or recipe field) and both values.
pub(crate) fn check_same(store: &StoreHeader, writer: &StoreHeader) -> Result<()> {
    if store.teacher != writer.teacher {
        return Err(mismatch(
            "teacher fingerprint",
            store.teacher.to_hex(),
            writer.teacher.to_hex(),
        ));
    }
    if store.encoding != writer.encoding {
        return Err(mismatch("encoding", store.encoding, writer.encoding));
    }
    compare_fields("teacher geometry", &store.geometry, &writer.geometry)?;
    compare_fields("view recipe", &store.recipe, &writer.recipe)
}

/// Compares two records field by field through their JSON form.
fn compare_fields<T: Serialize>(what: &str, store: &T, writer: &T) -> Result<()> {
    let (store, writer) = (to_json(store), to_json(writer));
    if let (Value::Object(s), Value::Object(w)) = (&store, &writer) {
        for (field, s_value) in s {
            let w_value = w.get(field).unwrap_or(&Value::Null);
            if s_value != w_value {
                return Err(mismatch(
                    format!("{what} field `{field}`"),
                    s_value,
                    w_value,
                ));
            }
        }
    }
    if store != writer {
        return Err(mismatch(what, &store, &writer));
    }
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("header records serialise")
}

fn mismatch(what: impl Into<String>, store: impl ToString, writer: impl ToString) -> StoreError {
    StoreError::Mismatch {
        what: what.into(),
        store: store.to_string(),
        writer: writer.to_string(),
    }
}
