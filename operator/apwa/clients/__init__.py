"""Clients of the HTTP servers a workload names: JSON requests with bounded retries (http), the
OpenAI-compatible chat-completions call (openai), and the dynamic planners built on them
(planners). The first two know nothing of workloads, so the agent worker can use them too."""
