"""Code the tests share: small real models, the engine's contract on MONAI's own inference, games with known
Shapley values, nnU-Net model folders and the shap reference. Tests import it as ``helpers.<module>``."""
