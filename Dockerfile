# pg-durable-proxy as a sidecar: put it next to the application and point the
# application's connection string at port 6433.
#   docker build -t pg-durable-proxy .
#   docker run -p 6433:6433 -e PGDP_UPSTREAM=postgres://db:5432/app pg-durable-proxy
# Without PGDP_UPSTREAM it runs its embedded PostgreSQL with data in /data.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    PGDP_LISTEN=0.0.0.0:6433 \
    PGDP_ADMIN=0.0.0.0:9433 \
    PGDP_DATA_DIR=/data/pg
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY sql ./sql
COPY config ./config
# PostgreSQL refuses to run as root: the embedded server and the proxy run as 'node'.
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME /data
EXPOSE 6433 9433
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD node -e "fetch('http://127.0.0.1:9433/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
ENTRYPOINT ["node", "dist/cli.js"]
