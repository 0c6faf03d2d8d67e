"""Model organisms: small models with planted, known safety properties.

Every analysis in wbsafe is tested against these.

- :mod:`.organism`: the ``organism.json`` record, the files on disk, the cache directory;
- :mod:`.recipes`: the tiny tier's shape, variants and the training data that plants each;
- :mod:`.tiny`: building the tiny tier from scratch, cached by recipe hash;
- :mod:`.measure`: refusal rates measured after training (the first-words rule);
- :mod:`.validity`: the tier's validity table (measured rates against planted bounds);
- :mod:`.plant`: planting a known property into any local chat model with LoRA;
- :mod:`.training`: the small fine-tuning loop (full or LoRA) they all train with.
"""

from wbsafe.organisms.measure import measure_suites
from wbsafe.organisms.organism import Organism
from wbsafe.organisms.plant import plant
from wbsafe.organisms.tiny import build_tiny_tier
from wbsafe.organisms.training import TrainRecipe
from wbsafe.organisms.validity import ValidityCheck, validity_checks

__all__ = [
    "Organism",
    "TrainRecipe",
    "ValidityCheck",
    "build_tiny_tier",
    "measure_suites",
    "plant",
    "validity_checks",
]
