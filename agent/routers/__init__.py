"""One APIRouter per concern; handlers stay thin and call the capability modules."""
