# The API service alone (`codeproxy proxy`); it reaches executors over the private network.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY codeproxy codeproxy
COPY proxy proxy
COPY executor executor
COPY storage storage
RUN pip install --no-cache-dir . && useradd --system --uid 10001 codeproxy \
    && mkdir /data && chown codeproxy /data
USER codeproxy
ENV CODEPROXY_HOST=0.0.0.0 CODEPROXY_PORT=8000 CODEPROXY_DATA_DIR=/data
EXPOSE 8000
CMD ["codeproxy", "proxy"]
