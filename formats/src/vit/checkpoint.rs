//! Reading teacher weights by their timm/MAE names.
//!
//! Two formats: PyTorch `.pth` files (zip + pickle, read lazily one tensor at a time by
//! candle's pickle reader), holding either a bare state dict or MAE's `{"model": state_dict}`;
//! and `.safetensors` files (timm's hub files, a student exported by `train`). Every tensor is
//! handed out as float32, whatever its stored dtype.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::{DType, Device, Tensor};

use super::error::VitError;

/// The key under which MAE's released checkpoints keep the encoder's state dict.
const MAE_STATE_KEY: &str = "model";

/// An opened checkpoint: tensor names and shapes, and lazy access to their values.
pub struct Checkpoint {
    path: PathBuf,
    shapes: HashMap<String, Vec<usize>>,
    tensors: Tensors,
}

enum Tensors {
    Pth(PthTensors),
    Safetensors(HashMap<String, Tensor>),
}

impl Checkpoint {
    /// Opens a `.pth` (`.pt`, `.bin`) or `.safetensors` checkpoint, chosen by extension.
    pub fn open(path: &Path) -> Result<Self, VitError> {
        let unreadable = |e: candle_core::Error| VitError::CheckpointUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        if !path.is_file() {
            return Err(VitError::CheckpointUnreadable {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let tensors = match extension.to_ascii_lowercase().as_str() {
            "pth" | "pt" | "bin" => {
                // A bare state dict has tensors at the top level; MAE nests it under `model`.
                let bare = PthTensors::new(path, None).map_err(unreadable)?;
                if bare.tensor_infos().is_empty() {
                    Tensors::Pth(PthTensors::new(path, Some(MAE_STATE_KEY)).map_err(|_| {
                        VitError::NoTensors {
                            path: path.to_path_buf(),
                        }
                    })?)
                } else {
                    Tensors::Pth(bare)
                }
            }
            "safetensors" => Tensors::Safetensors(
                candle_core::safetensors::load(path, &Device::Cpu).map_err(unreadable)?,
            ),
            _ => {
                return Err(VitError::CheckpointFormat {
                    path: path.to_path_buf(),
                })
            }
        };
        let shapes: HashMap<String, Vec<usize>> = match &tensors {
            Tensors::Pth(pth) => pth
                .tensor_infos()
                .iter()
                .map(|(name, info)| (name.clone(), info.layout.shape().dims().to_vec()))
                .collect(),
            Tensors::Safetensors(map) => map
                .iter()
                .map(|(name, t)| (name.clone(), t.dims().to_vec()))
                .collect(),
        };
        if shapes.is_empty() {
            return Err(VitError::NoTensors {
                path: path.to_path_buf(),
            });
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            shapes,
            tensors,
        })
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// All tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }

    /// The number of distinct blocks `blocks.{i}.*` (decoder blocks and others do not count).
    pub fn block_count(&self) -> usize {
        let blocks: BTreeSet<usize> = self
            .names()
            .filter_map(|n| n.strip_prefix("blocks.")?.split('.').next()?.parse().ok())
            .collect();
        blocks.len()
    }

    /// The model width D, read from `cls_token` `[1, 1, D]`.
    pub fn width(&self) -> Option<usize> {
        match self.shape("cls_token")? {
            [1, 1, d] => Some(*d),
            _ => None,
        }
    }

    /// Checks that tensor `name` exists with shape `expected`; `arch` describes the architecture
    /// for the error message.
    pub fn expect_shape(&self, name: &str, expected: &[usize], arch: &str) -> Result<(), VitError> {
        match self.shape(name) {
            None => Err(VitError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
            }),
            Some(found) if found != expected => Err(VitError::ShapeMismatch {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
                arch: arch.to_string(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Loads tensor `name` as row-major float32 values.
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>, VitError> {
        self.tensor(name)?
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.unreadable(name, e.to_string()))
    }

    /// Loads tensor `name` as a float32 tensor on the CPU, in its stored shape.
    pub fn tensor(&self, name: &str) -> Result<Tensor, VitError> {
        let unreadable = |reason: String| self.unreadable(name, reason);
        let tensor = match &self.tensors {
            Tensors::Pth(pth) => pth
                .get(name)
                .map_err(|e| unreadable(e.to_string()))?
                .ok_or_else(|| unreadable("missing".into()))?,
            Tensors::Safetensors(map) => map
                .get(name)
                .cloned()
                .ok_or_else(|| unreadable("missing".into()))?,
        };
        tensor
            .to_dtype(DType::F32)
            .map_err(|e| unreadable(e.to_string()))
    }

    fn unreadable(&self, name: &str, reason: String) -> VitError {
        VitError::CheckpointUnreadable {
            path: self.path.clone(),
            reason: format!("tensor `{name}`: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../extract/tests/fixtures/mae_tiny")
            .join(name)
    }

    #[test]
    fn bare_and_mae_state_dicts_read_alike() {
        let mae = Checkpoint::open(&fixture("mae_tiny.pth")).unwrap();
        let bare = Checkpoint::open(&fixture("bare_state_dict.pth")).unwrap();
        assert_eq!(mae.names().count(), 54);
        assert_eq!(bare.names().count(), 2);
        for name in ["cls_token", "pos_embed"] {
            assert_eq!(bare.shape(name), mae.shape(name));
            assert_eq!(bare.load_f32(name).unwrap(), mae.load_f32(name).unwrap());
        }
        assert_eq!(mae.shape("pos_embed"), Some(&[1, 17, 64][..]));
        assert_eq!((mae.block_count(), mae.width()), (4, Some(64)));
        assert_eq!((bare.block_count(), bare.width()), (0, Some(64)));
    }

    #[test]
    fn shape_checks_are_typed_and_name_the_tensor() {
        let ckpt = Checkpoint::open(&fixture("mae_tiny.pth")).unwrap();
        assert!(ckpt.expect_shape("cls_token", &[1, 1, 64], "tiny").is_ok());
        match ckpt.expect_shape("cls_token", &[1, 1, 768], "tiny") {
            Err(VitError::ShapeMismatch {
                tensor,
                expected,
                found,
                ..
            }) => {
                assert_eq!(
                    (tensor.as_str(), expected, found),
                    ("cls_token", vec![1, 1, 768], vec![1, 1, 64])
                )
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
        match ckpt.expect_shape("blocks.9.norm1.weight", &[64], "tiny") {
            Err(VitError::MissingTensor { tensor, .. }) => {
                assert_eq!(tensor, "blocks.9.norm1.weight")
            }
            other => panic!("expected MissingTensor, got {other:?}"),
        }
    }

    #[test]
    fn unusable_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("weights.txt");
        std::fs::write(&text, "hello").unwrap();
        let err = Checkpoint::open(&text).err().unwrap();
        assert!(matches!(err, VitError::CheckpointFormat { .. }), "{err}");
        assert!(err.to_string().contains("weights.txt"));
        let absent = dir.path().join("absent.pth");
        let err = Checkpoint::open(&absent).err().unwrap();
        assert!(
            err.to_string().contains("absent.pth") && err.to_string().contains("no such file"),
            "{err}"
        );
        let bogus = dir.path().join("bogus.safetensors");
        std::fs::write(&bogus, [0u8; 16]).unwrap();
        let err = Checkpoint::open(&bogus).err().unwrap();
        assert!(
            matches!(err, VitError::CheckpointUnreadable { .. })
                && err.to_string().contains("bogus.safetensors"),
            "{err}"
        );
    }
}
