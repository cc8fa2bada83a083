"""Routes for detect (being built)."""
from flask import Blueprint

bp = Blueprint("detect", __name__)
