"""Routes for kb (being built)."""
from flask import Blueprint

bp = Blueprint("kb", __name__)
