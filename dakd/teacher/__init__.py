"""The frozen teacher's outputs: what keys a teacher-output cache (:mod:`~dakd.teacher.key`),
how its entries are stored on disk (:mod:`~dakd.teacher.storage`), the store itself
(:mod:`~dakd.teacher.cache`), and where a step's teacher outputs come from, the cache or the live
teacher (:mod:`~dakd.teacher.outputs`). Imports the method and :mod:`dakd.runtime`, never the
engine."""
