//! The teacher's ONNX graph as a protobuf message: reading its metadata, inputs and
//! initializers, and choosing which of its tensors become graph outputs.
//!
//! Third-party teachers do not expose q, k and v as outputs; [`OnnxGraph::select_outputs`]
//! makes any named intermediate tensors the graph's only outputs, so ONNX Runtime also prunes
//! every node after them (the blocks above the target block never run).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use onnx_protobuf::{
    tensor_proto::DataType, type_proto, Message, ModelProto, TensorProto, TypeProto, ValueInfoProto,
};

use super::TeacherError;

/// A parsed teacher ONNX model.
pub struct OnnxGraph {
    path: PathBuf,
    model: ModelProto,
}

/// A graph input's declared element type and shape (`None`: a symbolic dimension).
#[derive(Clone, Debug, PartialEq)]
pub struct InputInfo {
    /// ONNX element type code (1 = float32).
    pub elem_type: i32,
    /// Declared dimensions; `None` where the dimension is symbolic or missing.
    pub dims: Vec<Option<i64>>,
}

impl OnnxGraph {
    /// Parses ONNX bytes; `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, TeacherError> {
        let model = ModelProto::parse_from_bytes(bytes).map_err(|e| TeacherError::NotOnnx {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if model.graph.is_none() || model.graph.node.is_empty() {
            return Err(TeacherError::NotOnnx {
                path: path.to_path_buf(),
                reason: "the model has no graph nodes".into(),
            });
        }
        Ok(OnnxGraph {
            path: path.to_path_buf(),
            model,
        })
    }

    /// The model file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of a `metadata_props` entry.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.model
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    /// The declared type of a graph input (initializers excluded), if the graph has it.
    pub fn input(&self, name: &str) -> Option<InputInfo> {
        let vi = self.model.graph.input.iter().find(|i| i.name == name)?;
        let Some(type_proto::Value::TensorType(t)) = &vi.type_.value else {
            return Some(InputInfo {
                elem_type: 0,
                dims: Vec::new(),
            });
        };
        let dims = t
            .shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(*v),
                _ => None,
            })
            .collect();
        Some(InputInfo {
            elem_type: t.elem_type,
            dims,
        })
    }

    /// Names of the graph's inputs that are not initializers.
    pub fn input_names(&self) -> Vec<String> {
        let inits: HashSet<&str> = self.initializer_names().collect();
        self.model
            .graph
            .input
            .iter()
            .map(|i| i.name.clone())
            .filter(|n| !inits.contains(n.as_str()))
            .collect()
    }

    fn initializer_names(&self) -> impl Iterator<Item = &str> {
        self.model.graph.initializer.iter().map(|t| t.name.as_str())
    }

    /// Whether some node of the graph produces a tensor of this name.
    pub fn produces(&self, name: &str) -> bool {
        self.model
            .graph
            .node
            .iter()
            .any(|n| n.output.iter().any(|o| o == name))
    }

    /// A float32 initializer's shape and values; `role` says what it is for, in errors.
    pub fn initializer_f32(
        &self,
        name: &str,
        role: &str,
    ) -> Result<(Vec<i64>, Vec<f32>), TeacherError> {
        let t = self
            .model
            .graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| TeacherError::MissingInitializer {
                model: self.path.clone(),
                name: name.to_string(),
                role: role.to_string(),
            })?;
        let values = float_values(t).ok_or_else(|| TeacherError::BadInitializer {
            name: name.to_string(),
            role: role.to_string(),
            reason: format!(
                "it is not a float32 tensor stored in the model (data type {}; external data is \
                 not supported)",
                t.data_type
            ),
        })?;
        let expected: i64 = t.dims.iter().product();
        if values.len() as i64 != expected {
            return Err(TeacherError::BadInitializer {
                name: name.to_string(),
                role: role.to_string(),
                reason: format!(
                    "shape {:?} needs {expected} values, it holds {}",
                    t.dims,
                    values.len()
                ),
            });
        }
        Ok((t.dims.clone(), values))
    }

    /// Declares the height and width of the graph input `name` symbolic, so that ONNX Runtime
    /// accepts other image sizes than the exporter's (for graphs that compute their position
    /// embedding from the input's shape). False when there is no such 4-D input.
    pub fn free_input_size(&mut self, name: &str) -> bool {
        let graph = self.model.graph.mut_or_insert_default();
        let Some(vi) = graph.input.iter_mut().find(|i| i.name == name) else {
            return false;
        };
        let Some(type_proto::Value::TensorType(t)) = &mut vi.type_.mut_or_insert_default().value
        else {
            return false;
        };
        let dims = &mut t.shape.mut_or_insert_default().dim;
        if dims.len() != 4 {
            return false;
        }
        for (d, symbol) in dims[2..].iter_mut().zip(["height", "width"]) {
            d.value = Some(
                onnx_protobuf::tensor_shape_proto::dimension::Value::DimParam(symbol.to_string()),
            );
        }
        true
    }

    /// Makes exactly `names` the graph's outputs (float32, shapes left to inference) and
    /// returns the serialised model. Every name must be produced by a node: otherwise
    /// [`TeacherError::MissingTensor`] names it and its `role`.
    pub fn select_outputs(&mut self, names: &[(&str, &str)]) -> Result<Vec<u8>, TeacherError> {
        for (name, role) in names {
            if !self.produces(name) {
                return Err(TeacherError::MissingTensor {
                    model: self.path.clone(),
                    tensor: name.to_string(),
                    role: role.to_string(),
                });
            }
        }
        let graph = self.model.graph.mut_or_insert_default();
        graph.output = names
            .iter()
            .map(|(name, _)| {
                let mut tensor = type_proto::Tensor::new();
                tensor.elem_type = DataType::FLOAT as i32;
                let mut ty = TypeProto::new();
                ty.value = Some(type_proto::Value::TensorType(tensor));
                let mut vi = ValueInfoProto::new();
                vi.name = name.to_string();
                vi.type_ = Some(ty).into();
                vi
            })
            .collect();
        self.model
            .write_to_bytes()
            .map_err(|e| TeacherError::NotOnnx {
                path: self.path.clone(),
                reason: format!("cannot re-serialise the edited graph: {e}"),
            })
    }
}

/// A float32 tensor's values from `float_data` or little-endian `raw_data`.
fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::FLOAT as i32 || !t.external_data.is_empty() {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(4) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}
