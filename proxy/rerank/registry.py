"""The backend registry: backend name -> "module:factory". Pure (imports nothing).

`BACKENDS` are local models (a synchronous `Backend`, run on the inference thread);
`EXECUTORS` are execution parts of their own (an `Executor`, e.g. a remote server).

The one list of backend names: `config` validates `model.backend` against it and
`rerank.loader.load_backend` imports the factory it names. Adding a backend touches one new
file and one line here. Factories take a `ModelConfig` and return a `Backend`.
"""

from __future__ import annotations

BACKENDS: dict[str, str] = {
    "torch": "proxy.rerank.torch_backend:load_torch",
    "torch-fp32": "proxy.rerank.torch_backend:load_torch_fp32",
    "onnx": "proxy.rerank.onnx_backend:load_onnx",
    "onnx-int8": "proxy.rerank.onnx_backend:load_onnx_int8",
    "torch-bf16": "proxy.rerank.torch_backend:load_torch_bf16",
    "openvino": "proxy.rerank.openvino_backend:load_openvino",
    "openvino-bf16": "proxy.rerank.openvino_backend:load_openvino_bf16",
    "fake": "proxy.rerank.fake:load_fake",
}
#: executors that are not a local model: name -> "module:factory" taking a `ModelConfig`
#: and returning an `Executor` (`remote`: an HTTP rerank server)
EXECUTORS: dict[str, str] = {
    "remote": "proxy.rerank.remote:load_remote",
}
#: what `model.backend` may say: `auto` or a registered name
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS, *EXECUTORS)
