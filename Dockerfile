# lastwill: one image for `lastwill agent`, `lastwill homeserver` or `lastwill all`.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# The `node` devDependency is for machines with an older system Node; the image already has 24.
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev --ignore-scripts

FROM node:24-bookworm-slim
# The image's listen addresses and stores are defaults (LASTWILL_DEFAULT_*): a config file, the
# LASTWILL_* variables and lk-jwt-service's LIVEKIT_JWT_BIND / LIVEKIT_JWT_PORT all win over them.
ENV NODE_ENV=production \
    LASTWILL_DEFAULT_AGENT_BIND=0.0.0.0:8080 \
    LASTWILL_DEFAULT_AGENT_DATA_DIR=/data/agent \
    LASTWILL_DEFAULT_HS_BIND=0.0.0.0:8008 \
    LASTWILL_DEFAULT_HS_DATA_DIR=/data/homeserver
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config ./config
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8080 8008
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["agent"]
