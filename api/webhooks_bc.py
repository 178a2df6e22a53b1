"""(Being written.)"""
import azure.functions as func

bp = func.Blueprint()
