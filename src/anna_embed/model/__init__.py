"""The model every stage shares: the embedder, its saved folder, its tokenization and where weights come from.

Modules: ``embedder`` (:class:`~anna_embed.model.embedder.Embedder`), ``config`` (the
:class:`~anna_embed.model.config.EmbedderConfig` a folder saves), ``prompting`` (prompt prefixes fitted to
the token budgets), ``tokenization`` (the decoder-only invariants), ``mteb`` (mteb's encoder protocol),
``folder`` (reading and writing a model folder), ``weights`` / ``provision`` (offline short names, hub ids
and local folders), ``cli`` (``anna-embed models``). Importing the package loads neither torch nor
transformers: import the module you need.
"""
