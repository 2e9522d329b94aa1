# The sweep worker image: `sweep` and its dependencies, CPU only.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweep ./sweep
COPY studies ./studies
RUN pip install --no-cache-dir .
ENV SWEEP_HOME=/data
VOLUME /data
ENTRYPOINT ["sweep"]
CMD ["--help"]
