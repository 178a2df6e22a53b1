"""Index function_app.py with the real Python worker's indexer (package azure-functions-runtime).

Run with the indexer venv's Python (3.13): it imports the app exactly as the Functions host's worker does
(``loader.index_function_app``), then loads each function into a worker ``Registry`` (binding directions,
return bindings, parameters <-> bindings). Prints one JSON line: {"functions": [...], "errors": [...]}.
"""
import json
import os
import sys
import types

root = sys.argv[1] if len(sys.argv) > 1 else os.getcwd()
sys.path.insert(0, root)
os.chdir(root)

from azure_functions_runtime import functions, loader  # noqa: E402
from azure_functions_runtime.bindings.meta import load_binding_registry  # noqa: E402


class BindingInfo:
    # Values of the worker's protobuf enums (FunctionRpc.proto: BindingInfo.Direction and DataType).
    in_ = 0
    out = 1
    inout = 2
    undefined = 0
    string = 1
    binary = 2
    stream = 3


protos = types.SimpleNamespace(BindingInfo=BindingInfo)

# What the worker does at init (handle_event.worker_init_request) before indexing.
load_binding_registry()
indexed = loader.index_function_app(os.path.join(root, "function_app.py"))
registry = functions.Registry()
loaded, errors = [], []
for fn in indexed:
    try:
        registry.add_indexed_function(fn, protos)
        loaded.append({"name": fn.get_function_name(),
                       "bindings": [json.loads(b) for b in fn.get_raw_bindings()]})
    except Exception as exc:  # report every failure, not just the first
        errors.append({"name": fn.get_function_name(), "error": f"{type(exc).__name__}: {exc}"})
print(json.dumps({"functions": loaded, "errors": errors}))
