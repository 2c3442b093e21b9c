"""Config facts (config.json fields) of the models the memory planner knows without a download.

One JSON file per model (``llama-3.1-8b.json`` ...) holds the fields of its Hugging Face config.json
that decide memory: widths, layer and head counts, vocabulary, tied embeddings. ``aliases.json`` maps
hub ids and short names onto them, with field overrides where a fine-tune changed a shape (the Tülu 3
models add a pad token). Keys starting with "_" are notes, not config fields.
"""
