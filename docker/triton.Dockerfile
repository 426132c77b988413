# The NGC Triton container (24.10 = Triton 2.51, the same release as the CPU binary in nvidia-pytriton 0.7.0)
# with tapestry installed into its Python, so the python-backend models can import the stage code.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
COPY pyproject.toml README.md /opt/tapestry/
COPY tapestry /opt/tapestry/tapestry
COPY triton_models /opt/tapestry/triton_models
# numpy<2: the python backend stub corrupts tensors with numpy 2.x.
RUN pip install --no-cache-dir "numpy<2" /opt/tapestry
