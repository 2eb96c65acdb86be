//! Where a dataset's samples come from: image files (a folder or a list of paths), JSON lines,
//! WebDataset tar shards and Parquet files. Each input is read as a stream, one sample at a
//! time, so a shard is never held in memory whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use parquet::file::reader::SerializedFileReader;
use parquet::record::reader::RowIter;
use parquet::record::Field;
use serde_json::{Map, Value};

use crate::AnyError;

/// File extensions taken as images (a folder's files, a WebDataset sample's members).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

/// Largest tar member or image cell read into memory; a bigger one is an error for its sample.
const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// Rows the Parquet reader assembles at a time (its default, 1024, would hold 1024 images).
const PARQUET_ROWS_PER_READ: usize = 16;

/// What one input is.
#[derive(Clone, Debug)]
pub enum InputKind {
    /// Image paths, listed up front (`--dir`, `--input-list`, paths on the command line).
    Files(Vec<String>),
    /// A JSON-lines file: one object per line with an image path and optional prompt fields.
    Jsonl(PathBuf),
    /// A WebDataset tar shard: samples are consecutive members sharing a key.
    WebDataset(PathBuf),
    /// A Parquet file with the image bytes in a column.
    Parquet(PathBuf),
}

/// One input of a dataset run, with the name its results are written under.
#[derive(Clone, Debug)]
pub struct Input {
    /// Where the samples come from.
    pub kind: InputKind,
    /// The file stem (`00042` for `shards/00042.tar`), naming its output file.
    pub name: String,
}

impl Input {
    /// An input file; its name is the file stem.
    pub fn file(kind: fn(PathBuf) -> InputKind, path: &str) -> Self {
        let path = PathBuf::from(path);
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        Input {
            kind: kind(path),
            name,
        }
    }

    /// The file the input is read from (`None` for a list of image files).
    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            InputKind::Files(_) => None,
            InputKind::Jsonl(p) | InputKind::WebDataset(p) | InputKind::Parquet(p) => Some(p),
        }
    }
}

/// An image as a sample holds it.
pub enum ImageData {
    /// A file to read.
    Path(String),
    /// Encoded bytes (a tar member, a Parquet cell).
    Bytes(Vec<u8>),
}

/// A prompt a sample carries.
pub enum RowPrompt {
    /// Given to the language model as it is.
    Raw(String),
    /// Put into the model's question template first.
    Question(String),
}

/// One sample: its image (or why it has none), its own prompt if any, and the fields that
/// identify it and are carried into its output line.
pub struct Sample {
    /// The image, or why the sample has none.
    pub image: Result<ImageData, String>,
    /// The sample's own prompt or question.
    pub prompt: Option<RowPrompt>,
    /// `image` (a path), or `source` and `key`; plus `json` (a WebDataset sample's .json member)
    /// or `meta` (the other JSONL fields or Parquet columns).
    pub line: Map<String, Value>,
}

/// The field (JSONL key, Parquet column, WebDataset member extension) names the user chose.
#[derive(Clone, Debug)]
pub struct FieldNames {
    /// Where the image is (a path in JSONL, bytes or `{bytes, path}` in Parquet).
    pub image: String,
    /// The sample's key.
    pub key: String,
    /// A raw prompt.
    pub prompt: String,
    /// A question for the model's question template.
    pub question: String,
}

/// Reads `input`, handing each sample (in order) to `emit` with its 0-based row number; stops
/// early when `emit` returns false.
pub fn read(
    input: &Input,
    names: &FieldNames,
    emit: &mut dyn FnMut(usize, Sample) -> bool,
) -> Result<(), AnyError> {
    match &input.kind {
        InputKind::Files(paths) => {
            for (row, path) in paths.iter().enumerate() {
                let mut line = Map::new();
                line.insert("image".into(), path.clone().into());
                let sample = Sample {
                    image: Ok(ImageData::Path(path.clone())),
                    prompt: None,
                    line,
                };
                if !emit(row, sample) {
                    break;
                }
            }
            Ok(())
        }
        InputKind::Jsonl(path) => read_jsonl(path, names, emit),
        InputKind::WebDataset(path) => read_webdataset(path, names, emit),
        InputKind::Parquet(path) => read_parquet(path, names, emit),
    }
    .map_err(|e| match input.path() {
        Some(path) => format!("{}: {e}", path.display()).into(),
        None => e,
    })
}

fn open(path: &Path) -> Result<File, AnyError> {
    File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

fn identified(source: &Path, key: String) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("key".into(), key.into());
    line.insert("source".into(), source.display().to_string().into());
    line
}

/// A prompt from the sample's fields: a raw prompt, or a question; both is an error.
fn row_prompt(
    prompt: Option<String>,
    question: Option<String>,
) -> Result<Option<RowPrompt>, String> {
    match (prompt, question) {
        (Some(_), Some(_)) => Err("the sample has both a prompt and a question".into()),
        (Some(p), None) => Ok(Some(RowPrompt::Raw(p))),
        (None, Some(q)) => Ok(Some(RowPrompt::Question(q))),
        (None, None) => Ok(None),
    }
}

/// A sample from its parts; a prompt that could not be read makes it an error sample.
fn sample(
    image: Result<ImageData, String>,
    prompt: Result<Option<RowPrompt>, String>,
    line: Map<String, Value>,
) -> Sample {
    match prompt {
        Ok(prompt) => Sample {
            image,
            prompt,
            line,
        },
        Err(e) => Sample {
            image: Err(e),
            prompt: None,
            line,
        },
    }
}

fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_jsonl(
    path: &Path,
    names: &FieldNames,
    emit: &mut dyn FnMut(usize, Sample) -> bool,
) -> Result<(), AnyError> {
    let base = path.parent().unwrap_or(Path::new(""));
    let mut row = 0;
    for (n, text) in BufReader::new(open(path)?).lines().enumerate() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        let sample = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(mut fields)) => {
                let key = fields
                    .remove(&names.key)
                    .as_ref()
                    .and_then(key_text)
                    .unwrap_or_else(|| row.to_string());
                let mut text_field = |name: &str| -> Result<Option<String>, String> {
                    match fields.remove(name) {
                        None | Some(Value::Null) => Ok(None),
                        Some(Value::String(s)) => Ok(Some(s)),
                        Some(other) => Err(format!("{name:?} is {other}, not a string")),
                    }
                };
                let (image, prompt, question) = (
                    text_field(&names.image),
                    text_field(&names.prompt),
                    text_field(&names.question),
                );
                let image = image.and_then(|p| {
                    let p = p.ok_or_else(|| format!("the row has no {:?} field", names.image))?;
                    // A relative path is relative to the JSONL file, as a dataset is moved whole.
                    Ok(ImageData::Path(base.join(p).display().to_string()))
                });
                let prompt = prompt.and_then(|p| row_prompt(p, question?));
                let mut line = identified(path, key);
                if let Ok(ImageData::Path(p)) = &image {
                    line.insert("image".into(), p.clone().into());
                }
                if !fields.is_empty() {
                    line.insert("meta".into(), Value::Object(fields));
                }
                sample(image, prompt, line)
            }
            _ => Sample {
                image: Err(format!("line {} is not a JSON object", n + 1)),
                prompt: None,
                line: identified(path, row.to_string()),
            },
        };
        if !emit(row, sample) {
            break;
        }
        row += 1;
    }
    Ok(())
}

/// A WebDataset member's key and extension: the path up to the first dot of its file name, and
/// the rest (`train/000123.seg.png` is key `train/000123`, extension `seg.png`).
fn split_member(path: &str) -> Option<(&str, &str)> {
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    let dot = path[name_start..].find('.')? + name_start;
    Some((&path[..dot], &path[dot + 1..]))
}

/// The members of one WebDataset sample that are read.
#[derive(Default)]
struct Members {
    key: String,
    image: Option<Result<Vec<u8>, String>>,
    json: Option<Value>,
    prompt: Option<String>,
    question: Option<String>,
    seen: Vec<String>,
}

impl Members {
    fn into_sample(self, source: &Path) -> Sample {
        let mut line = identified(source, self.key);
        if let Some(json) = self.json {
            line.insert("json".into(), json);
        }
        let seen = self.seen.join(", ");
        let image = match self.image {
            Some(Ok(bytes)) => Ok(ImageData::Bytes(bytes)),
            Some(Err(e)) => Err(e),
            None => Err(format!("no image member (members: {seen})")),
        };
        sample(image, row_prompt(self.prompt, self.question), line)
    }
}

fn read_member(entry: &mut impl Read, size: u64) -> Result<Vec<u8>, String> {
    if size > MAX_MEMBER_BYTES {
        return Err(format!("member of {size} bytes, above {MAX_MEMBER_BYTES}"));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read member: {e}"))?;
    Ok(bytes)
}

fn read_webdataset(
    path: &Path,
    names: &FieldNames,
    emit: &mut dyn FnMut(usize, Sample) -> bool,
) -> Result<(), AnyError> {
    let mut archive = tar::Archive::new(BufReader::new(open(path)?));
    let mut current: Option<Members> = None;
    let mut row = 0;
    let text_member = |ext: &str, field: &str| ext == field || ext == format!("{field}.txt");
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = split_member(&member) else {
            continue;
        };
        if current.as_ref().is_none_or(|m| m.key != key) {
            if let Some(done) = current.take() {
                if !emit(row, done.into_sample(path)) {
                    return Ok(());
                }
                row += 1;
            }
            current = Some(Members {
                key: key.to_owned(),
                ..Members::default()
            });
        }
        let members = current.as_mut().expect("set above");
        let ext = ext.to_ascii_lowercase();
        members.seen.push(ext.clone());
        let size = entry.header().size()?;
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            if members.image.is_none() {
                members.image = Some(read_member(&mut entry, size));
            }
        } else if ext == "json" {
            let bytes = read_member(&mut entry, size)?;
            members.json =
                Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                }));
        } else if text_member(&ext, &names.prompt) || text_member(&ext, &names.question) {
            let text = String::from_utf8_lossy(&read_member(&mut entry, size)?)
                .trim()
                .to_owned();
            if text_member(&ext, &names.prompt) {
                members.prompt = Some(text);
            } else {
                members.question = Some(text);
            }
        }
    }
    if let Some(done) = current {
        emit(row, done.into_sample(path));
    }
    Ok(())
}

/// A Parquet cell as text (a prompt, a key).
fn field_text(field: &Field) -> Option<String> {
    match field {
        Field::Null => None,
        Field::Str(s) => Some(s.clone()),
        other => key_text(&other.to_json_value()),
    }
}

/// The image of a Parquet cell: bytes, or Hugging Face datasets' `{bytes, path}` struct (its
/// bytes, or its path when the bytes are null).
fn field_image(field: Field, column: &str) -> Result<ImageData, String> {
    match field {
        Field::Bytes(b) => Ok(ImageData::Bytes(b.data().to_vec())),
        Field::Group(row) => {
            let mut path = None;
            for (name, inner) in row.into_columns() {
                match (name.as_str(), inner) {
                    ("bytes", Field::Bytes(b)) => return Ok(ImageData::Bytes(b.data().to_vec())),
                    ("path", Field::Str(p)) => path = Some(p),
                    _ => {}
                }
            }
            path.map(ImageData::Path)
                .ok_or_else(|| format!("{column:?} holds neither bytes nor a path"))
        }
        Field::Null => Err(format!("{column:?} is null")),
        other => Err(format!("{column:?} is {other}, not image bytes")),
    }
}

fn read_parquet(
    path: &Path,
    names: &FieldNames,
    emit: &mut dyn FnMut(usize, Sample) -> bool,
) -> Result<(), AnyError> {
    let reader = SerializedFileReader::new(open(path)?)?;
    let rows = RowIter::from_file_into(Box::new(reader)).with_batch_size(PARQUET_ROWS_PER_READ);
    for (row, record) in rows.enumerate() {
        let mut image = Err(format!("the row has no {:?} column", names.image));
        let (mut key, mut prompt, mut question) = (None, None, None);
        let mut meta = Map::new();
        for (name, field) in record?.into_columns() {
            if name == names.image {
                image = field_image(field, &name);
            } else if name == names.key {
                key = field_text(&field);
            } else if name == names.prompt {
                prompt = field_text(&field);
            } else if name == names.question {
                question = field_text(&field);
            } else {
                meta.insert(name, field.to_json_value());
            }
        }
        let mut line = identified(path, key.unwrap_or_else(|| row.to_string()));
        if !meta.is_empty() {
            line.insert("meta".into(), Value::Object(meta));
        }
        if !emit(row, sample(image, row_prompt(prompt, question), line)) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webdataset_keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_member("000123.jpg"), Some(("000123", "jpg")));
        assert_eq!(
            split_member("train.v2/000123.seg.png"),
            Some(("train.v2/000123", "seg.png"))
        );
        assert_eq!(split_member("README"), None);
    }
}
