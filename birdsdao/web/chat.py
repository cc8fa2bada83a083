"""Routes for chat (being built)."""
from flask import Blueprint

bp = Blueprint("chat", __name__)
