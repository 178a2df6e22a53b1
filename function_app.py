"""Azure Functions entry point (Python v2 programming model): registration only.

Nothing here reads settings or opens connections: an import-time failure would make the host hide every
function. Settings are read at first use (``sync.settings.get_settings``).
"""
import azure.functions as func

from api import couplings, errors_page, mappings, meta, sync, webhooks_bc, webhooks_dataverse

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

for blueprint in (meta.bp, mappings.bp, couplings.bp, sync.bp, errors_page.bp, webhooks_dataverse.bp,
                  webhooks_bc.bp):
    app.register_functions(blueprint)
