"""What tandem's services share about talking to one another: endpoints and their discovery,
errors in OpenAI's shape, tandem's headers and fields, and HTTP proxying."""
