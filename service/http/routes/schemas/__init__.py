"""The answers' shapes, declared once, one module per protocol: ``common`` (the base and our error),
``inference`` (/predict, /ab), ``operations`` (/models, health), ``oip`` (/v2). Response models are
closed (unknown keys are errors), so a test that validates an answer catches a renamed field."""
