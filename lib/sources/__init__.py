"""Closed forms, bounds and tables quoted from one source each.

One module per source, named after its bibliography key in ``references.bib``; each
function names the equation, lemma or table it implements. The general tools these use
live in the layers below (sources import from them, never the reverse):

- :mod:`.kristiadi2023` (``kristiadi2023geometry``): the sine regression of section 5.2,
  Table 1 (experiment A6), under laplace-torch's protocol and at the exact MAP;
- :mod:`.dasilva2025` (``dasilva2025hideseek``): geodesic sharpness of the scalar toy model
  (App. D) and of diagonal linear networks (Section 5.1, App. E) in closed form;
- :mod:`.mao2025` (``mao2025hidden``): the spectral results of chapter 5 (eigenvalues and
  bounds of the training manifold's PCA matrix, Lemmas 5.2.1-5.2.3).
"""
