"""Data: synthetic video QA (:mod:`.synth`), the CLIP feature cache (:mod:`.features`) and
instruction data sets over the cache (:mod:`.instruct`)."""
