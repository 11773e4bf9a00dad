export default defineNitroConfig({
  srcDir: "server",
  compatibilityDate: "2025-01-01",
});
