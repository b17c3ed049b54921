# One image for Hugging Face Spaces, RunPod and local GPU hosts; the command picks what runs:
#   docker build -t featurescope .                 (--build-arg WITH_RUNPOD=1 adds the RunPod worker)
#   docker run -p 7860:7860 featurescope           the app (Streamlit on 7860, as HF Spaces expects)
#   docker run --gpus all -p 8000:8000 -e FEATURESCOPE_API_KEY=... featurescope service
#   docker run --gpus all -e FEATURESCOPE_API_KEY=... featurescope runpod
# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64; the same image runs on CPU.
FROM python:3.11-slim-bookworm

ARG WITH_RUNPOD=0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/.huggingface \
    FEATURESCOPE_DATA_DIR=/data/featurescope \
    PORT=7860 \
    SERVICE_PORT=8000

# Spaces run the container as uid 1000 and mount persistent storage at /data.
RUN useradd --create-home --no-log-init --uid 1000 user \
    && mkdir -p /data \
    && chown user:user /data

WORKDIR /app
COPY --chown=user:user requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && if [ "$WITH_RUNPOD" = "1" ]; then pip install --no-cache-dir runpod==1.12.0; fi
COPY --chown=user:user . .

USER 1000
EXPOSE 7860 8000
ENTRYPOINT ["deploy/entrypoint.sh"]
CMD ["app"]
