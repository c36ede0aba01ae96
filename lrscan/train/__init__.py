"""Training: the plan of a sweep's stages (plan), the batched engine that steps M runs together
(engine), one stage's loop (loop), and the sweep that cuts runs into batches and writes them to
the store (sweep, with its size estimates in estimate)."""
