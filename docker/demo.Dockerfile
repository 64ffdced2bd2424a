# The demo site; docker/compose.yaml runs it next to the database image.
FROM python:3.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md /app/
COPY django_rls /app/django_rls
RUN pip install --no-cache-dir /app "psycopg[binary]"
COPY demo /app/demo
EXPOSE 8000
CMD ["python", "demo/setup.py", "--serve", "--host", "0.0.0.0"]
