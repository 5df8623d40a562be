"""The paper's analyses of a trained VAE.

Data flow: checkpoint + synthgen set -> analysis.encode (posterior means) -> analysis.regression
(Eq. 3, unit criteria) -> analysis.area_vs_number (`analyze-area-vs-number`); or -> analysis.readout
(the MLP of section 4.3) -> analysis.metrics (AP, accuracy, confusion) (`vae-subitize`).
"""
