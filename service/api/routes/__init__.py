"""One APIRouter per resource; handlers stay thin."""
