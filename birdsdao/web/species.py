"""Routes for species (being built)."""
from flask import Blueprint

bp = Blueprint("species", __name__)
