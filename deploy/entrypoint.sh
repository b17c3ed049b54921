#!/bin/sh
# The Docker image's commands (see the Dockerfile):
#   app      Streamlit on $PORT (7860, as Hugging Face Spaces expects)  [default]
#   service  the HTTP service on $SERVICE_PORT (8000); needs FEATURESCOPE_API_KEY
#   runpod   the RunPod serverless worker (image built with WITH_RUNPOD=1)
#   other    run as given, e.g. `python -m backend info`
set -eu
cmd="${1:-app}"
if [ "$#" -gt 0 ]; then
    shift
fi
case "$cmd" in
    app)
        exec python -m streamlit run app.py --server.address 0.0.0.0 --server.port "${PORT:-7860}" \
            --server.headless true "$@"
        ;;
    service)
        exec python -m backend.http.service --host 0.0.0.0 --port "${SERVICE_PORT:-8000}" "$@"
        ;;
    runpod)
        exec python -m deploy.runpod_worker "$@"
        ;;
    *)
        exec "$cmd" "$@"
        ;;
esac
