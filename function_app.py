"""Azure Functions entry point (Python v2 programming model): registration only.

Nothing here reads settings or opens connections: an import-time failure would make the host hide every
function. Settings are read at first use (``sync.settings.get_settings``).
"""
import azure.functions as func

from api import couplings, mappings, meta, sync

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (meta.bp, mappings.bp, couplings.bp, sync.bp):
    app.register_functions(blueprint)
