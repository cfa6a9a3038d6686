"""The kernel ops as ONNX nodes that TensorRT's ONNX parser turns into our plugins.

TensorRT's parser imports a node it has no built-in importer for as a plugin: the op type is
the plugin name, the `plugin_namespace` and `plugin_version` attributes select the creator,
and `aot` asks for the plugin's ahead-of-time implementation (TensorRT developer guide,
"Adding Custom Layers Using the Python API: Quickly Deployable Plugins", ONNX section). The
nodes live in their own ONNX domain, declared in the model's opset imports, so onnx.checker
accepts them; onnxruntime cannot run them.
"""

from __future__ import annotations

import onnx
import torch
from onnxscript import values

from stable_audio_rt.kernels.specs import GQA_CROSS_ATTENTION, NAMESPACE, ROPE_SELF_ATTENTION, SNAKE

PLUGIN_DOMAIN = NAMESPACE
PLUGIN_VERSION = "1"
PLUGIN_OPSET_VERSION = 1
_ATTRIBUTES = {"plugin_namespace": NAMESPACE, "plugin_version": PLUGIN_VERSION, "aot": 1}
_ACTIVATION_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def _schema(name: str, inputs: list[tuple[str, str]], doc: str) -> onnx.defs.OpSchema:
    """A schema for one plugin node: inputs typed T (activations) or fp32 tables, output T."""
    OpSchema = onnx.defs.OpSchema
    Attr = OpSchema.AttrType
    return OpSchema(
        name,
        PLUGIN_DOMAIN,
        PLUGIN_OPSET_VERSION,
        doc=doc,
        inputs=[OpSchema.FormalParameter(n, t) for n, t in inputs],
        outputs=[OpSchema.FormalParameter("out", "T")],
        type_constraints=[("T", _ACTIVATION_TYPES, "activation dtype")],
        attributes=[
            OpSchema.Attribute("plugin_namespace", Attr.STRING, "TensorRT plugin namespace"),
            OpSchema.Attribute("plugin_version", Attr.STRING, "TensorRT plugin version"),
            OpSchema.Attribute("aot", Attr.INT, "1: use the plugin's ahead-of-time implementation"),
        ],
    )


def _schemas() -> list[onnx.defs.OpSchema]:
    return [
        _schema(
            ROPE_SELF_ATTENTION.name,
            [("q", "T"), ("k", "T"), ("v", "T"), ("cos", "tensor(float)"), ("sin", "tensor(float)")],
            "Self-attention with half-split partial RoPE on q and k; (B, H, T, Dh) in and out.",
        ),
        _schema(
            GQA_CROSS_ATTENTION.name,
            [("q", "T"), ("k", "T"), ("v", "T")],
            "Cross-attention, query head h reading KV head h // (H / Hkv); no mask.",
        ),
        _schema(
            SNAKE.name,
            [("x", "T"), ("alpha", "tensor(float)"), ("inv_beta", "tensor(float)")],
            "Snake: x + inv_beta * sin(alpha * x)^2 per channel of (B, C, T).",
        ),
    ]


def register_plugin_schemas() -> None:
    """Make the plugin nodes known to onnx (and so to onnxscript's tracer); idempotent."""
    for schema in _schemas():
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)


def _node(name: str, *inputs):
    return values.Op(values.Opset(PLUGIN_DOMAIN, PLUGIN_OPSET_VERSION), name)(*inputs, **_ATTRIBUTES)


def _rope_self_attention(q, k, v, cos, sin):
    return _node(ROPE_SELF_ATTENTION.name, q, k, v, cos, sin)


def _gqa_cross_attention(q, k, v):
    return _node(GQA_CROSS_ATTENTION.name, q, k, v)


def _snake(x, alpha, inv_beta):
    return _node(SNAKE.name, x, alpha, inv_beta)


def plugin_translation_table() -> dict:
    """`custom_translation_table` for torch.onnx.export(dynamo=True); registers the schemas."""
    register_plugin_schemas()
    ops = torch.ops.stable_audio_rt
    return {
        ops.rope_self_attention.default: _rope_self_attention,
        ops.gqa_cross_attention.default: _gqa_cross_attention,
        ops.snake.default: _snake,
    }
